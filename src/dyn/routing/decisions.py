"""The last routing decisions of one router, kept for the dashboard and ``dyn route``.

A strategy given a :class:`DecisionLog` (``strategy.decisions = log``) records each
request it routes in ``on_routed``: when, which request, which worker, and, for a
strategy that weighs workers (the kv family), every candidate's overlap and cost as the
strategy computed them for that choice. Recording is O(1): the strategy hands over the
lists it already built, nothing is copied or recomputed; rendering to JSON-ready rows
happens only when someone asks. The log keeps the last ``size`` decisions (a ring), so
its memory is bounded whatever the traffic.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["DEFAULT_DECISIONS_KEPT", "DecisionLog", "RouteDecision", "ScoredCost"]

# Enough for a screen of the dashboard's decision panel and a few seconds of traffic.
DEFAULT_DECISIONS_KEPT = 50


class ScoredCost(Protocol):
    """What a decision keeps of each candidate's cost (``dyn.routing.kv.cost.Cost``)."""

    @property
    def cost(self) -> float: ...


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """One routed request. ``workers``, ``overlaps`` and ``costs`` are the strategy's
    own (read-only) lists of its plan, empty for a strategy that weighs nothing."""

    time: float
    request_id: str
    worker: str
    strategy: str
    workers: Sequence[str] = ()
    overlaps: Mapping[str, int] | None = None
    costs: Sequence[ScoredCost] = ()
    # A strategy's cost terms per candidate, as dataclasses of named floats
    # (kv_latency's predicted milliseconds).
    terms: Sequence[Any] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready row: ``scores`` lists each candidate, or is None when the strategy
        does not weigh candidates (round_robin, random, least_loaded)."""
        scores: list[dict[str, Any]] | None = None
        if self.workers:
            overlaps = self.overlaps or {}
            scores = []
            for i, worker in enumerate(self.workers):
                row: dict[str, Any] = {
                    "worker": worker,
                    "overlap_blocks": overlaps.get(worker, 0),
                    "cost": self.costs[i].cost if i < len(self.costs) else None,
                }
                if i < len(self.terms) and dataclasses.is_dataclass(self.terms[i]):
                    row["terms"] = dataclasses.asdict(self.terms[i])
                scores.append(row)
        return {
            "time": self.time,
            "request_id": self.request_id,
            "worker": self.worker,
            "strategy": self.strategy,
            "scores": scores,
        }


class DecisionLog:
    """A ring of the last ``size`` decisions; ``clock`` gives the wall time of each."""

    def __init__(self, size: int = DEFAULT_DECISIONS_KEPT, clock: Callable[[], float] = time.time):
        if size < 1:
            raise ValueError(f"a decision log keeps at least 1 decision, not {size}")
        self._ring: deque[RouteDecision] = deque(maxlen=size)
        self._clock = clock
        self.recorded = 0  # decisions ever recorded, the ones dropped from the ring included

    @property
    def size(self) -> int:
        assert self._ring.maxlen is not None
        return self._ring.maxlen

    def __len__(self) -> int:
        return len(self._ring)

    def record(
        self,
        request_id: str,
        worker: str,
        strategy: str,
        *,
        workers: Sequence[str] = (),
        overlaps: Mapping[str, int] | None = None,
        costs: Sequence[ScoredCost] = (),
        terms: Sequence[Any] = (),
    ) -> None:
        """Keep one decision, dropping the oldest when full: O(1), nothing copied."""
        self._ring.append(
            RouteDecision(
                self._clock(), request_id, worker, strategy, workers, overlaps, costs, terms
            )
        )
        self.recorded += 1

    def recent(self, limit: int | None = None) -> list[RouteDecision]:
        """The kept decisions, newest first, at most ``limit`` of them."""
        newest = list(reversed(self._ring))
        return newest if limit is None else newest[: max(0, limit)]
