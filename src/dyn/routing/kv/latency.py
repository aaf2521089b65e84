"""The ``kv_latency`` strategy: the worker where the request, and those it joins, finish
soonest; cached prefixes win only while they cost little latency.

It keeps ``kv``'s machinery (the radix index fed by KV events, the in-flight tracker,
replica sync) and replaces the cost: each worker's predicted prefill, decode and harm in
milliseconds from the engine's timing model (:mod:`dyn.routing.kv.latency_cost`,
docs/kv-routing.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from dyn.discovery.base import Instance
from dyn.errors import RoutingError
from dyn.routing.base import RouteRequest, WorkerScore
from dyn.routing.kv.cost import Cost
from dyn.routing.kv.latency_cost import (
    DEFAULT_OUTPUT_TOKENS,
    DEFAULT_SLACK,
    LatencyTerms,
    WorkerState,
    latency_terms,
    pick,
)
from dyn.routing.kv.router import KvRouter, RoutePlan
from dyn.routing.simple import Direct

__all__ = ["DEFAULT_CAPACITY_BLOCKS", "KvLatencyRouter", "LatencyPlan"]

# KV blocks assumed for a worker that declares no cache size (an OpenAI-compatible
# server behind a proxy worker); the mocker's default (docs/mocker-timing.md).
DEFAULT_CAPACITY_BLOCKS = 16384

_OWN_OPTIONS = {"slack": float, "output_tokens": int, "capacity_blocks": int}


@dataclass(frozen=True)
class LatencyPlan(RoutePlan):
    """A :class:`RoutePlan` with each candidate's predicted latencies."""

    terms: tuple[LatencyTerms, ...] = ()


class KvLatencyRouter(KvRouter):
    """Lowest predicted latency, preferring cached prefixes within ``slack``."""

    name: ClassVar[str] = "kv_latency"
    OPTIONS: ClassVar[tuple[str, ...]] = ("block_size", "seed", *_OWN_OPTIONS)

    def __init__(self, options: Mapping[str, Any] | None = None, *, seed: int | None = None):
        given = dict(options or {})
        own = {key: given.pop(key) for key in _OWN_OPTIONS if key in given}
        unknown = sorted(set(given) - set(self.OPTIONS))
        if unknown:
            names = ", ".join(repr(name) for name in unknown)
            raise RoutingError(
                f"unknown option {names} for the {self.name} strategy; "
                f"valid options: {', '.join(sorted(self.OPTIONS))}"
            )
        super().__init__(given, seed=seed)
        self.options.update(own)
        values = {key: _number(key, _OWN_OPTIONS[key], value) for key, value in own.items()}
        self.slack = float(values.get("slack", DEFAULT_SLACK))
        self.output_tokens = int(values.get("output_tokens", DEFAULT_OUTPUT_TOKENS))
        self.capacity_blocks = int(values.get("capacity_blocks", 0))
        if self.slack < 0 or self.output_tokens < 1 or self.capacity_blocks < 0:
            raise RoutingError(
                f"{self.name} options: slack must not be negative, output_tokens must be "
                "at least 1, capacity_blocks must not be negative (0: each worker's own)"
            )

    def _capacity_tokens(self, candidate: Instance, block_size: int) -> int:
        blocks = self.capacity_blocks or candidate.metadata.get("total_blocks") or 0
        if not blocks:
            load = self.loads.get(candidate.instance_id)
            blocks = load.total_blocks if load is not None else 0
        return int(blocks or DEFAULT_CAPACITY_BLOCKS) * block_size

    def _plan(self, candidates: Sequence[Instance], request: RouteRequest) -> LatencyPlan:
        block_size, local, keys, extra, cached = self._prompt_blocks(candidates, request)
        max_tokens = request.extra.get("max_tokens")
        output = self.output_tokens
        if isinstance(max_tokens, int) and max_tokens > 0:
            output = max_tokens
        overlaps: dict[str, int] = {}
        workers: list[str] = []
        costs: list[Cost] = []
        terms: list[LatencyTerms] = []
        for candidate in candidates:
            worker = candidate.instance_id
            flight = self.tracker.flight(worker)
            overlap, inflight = self._overlap(worker, keys, cached)
            state = WorkerState(
                overlap_blocks=overlap,
                requests=flight.requests,
                prefill_tokens=flight.prefill_tokens,
                context_tokens=flight.sequence_blocks * block_size,
                capacity_tokens=self._capacity_tokens(candidate, block_size),
                active_blocks=flight.active_blocks,
                new_blocks=len(keys) + extra - inflight + -(-output // block_size),
            )
            these = latency_terms(
                state,
                prompt_tokens=len(request.tokens),
                output_tokens=output,
                block_size=block_size,
            )
            uncached = max(0, len(request.tokens) - overlap * block_size)
            overlaps[worker] = overlap
            workers.append(worker)
            terms.append(these)
            costs.append(
                Cost(
                    prefill_blocks=(flight.prefill_tokens + uncached) / block_size,
                    decode_blocks=float(flight.sequence_blocks + len(keys) + extra),
                    cost=these.total_ms,
                )
            )
        return LatencyPlan(
            block_size, keys, local, extra, overlaps, workers, costs, terms=tuple(terms)
        )

    def _choices(self, plan: LatencyPlan) -> list[int]:
        requests = [self.tracker.flight(w).requests for w in plan.workers]
        return pick(plan.terms, [plan.overlaps[w] for w in plan.workers], self.slack, requests)

    def select(self, candidates: Sequence[Instance], request: RouteRequest) -> Instance:
        if request.instance_id is not None:
            return Direct.pick(candidates, request.instance_id)
        plan = self._plan(candidates, request)
        choices = self._choices(plan)
        chosen = candidates[choices[0] if len(choices) == 1 else self._rng.choice(choices)]
        self.remember(request.request_id, chosen.instance_id, plan)
        return chosen

    def explain(self, candidates: Sequence[Instance], request: RouteRequest) -> list[WorkerScore]:
        if request.instance_id is not None:
            return super().explain(candidates, request)
        plan = self._plan(candidates, request)
        choices = self._choices(plan)
        cheapest = min(t.total_ms for t in plan.terms)
        note = f"a random pick among {len(choices)} equal costs" if len(choices) > 1 else ""
        if not note and plan.terms[choices[0]].total_ms > cheapest:
            note = f"holds more of the prompt, within {self.slack:.0%} of the cheapest"
        return [
            WorkerScore(
                worker,
                overlap_blocks=plan.overlaps[worker],
                prefill_blocks=cost.prefill_blocks,
                decode_blocks=cost.decode_blocks,
                cost=cost.cost,
                chosen=i == choices[0],
                notes=note if i == choices[0] else "",
                terms={
                    "prefill_ms": these.prefill_ms,
                    "decode_ms": these.decode_ms,
                    "harm_ms": these.harm_ms,
                },
            )
            for i, (worker, cost, these) in enumerate(
                zip(plan.workers, plan.costs, plan.terms, strict=True)
            )
        ]

    def describe(self) -> dict[str, dict[str, float]]:
        result = super().describe()
        for worker, row in result.items():
            row["sequence_blocks"] = self.tracker.flight(worker).sequence_blocks
        return result


def _number(key: str, kind: type, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RoutingError(f"kv_latency option {key} must be a number, got {value!r}")
    if kind is int and value != int(value):
        raise RoutingError(f"kv_latency option {key} must be a whole number, got {value}")
    return float(value)
