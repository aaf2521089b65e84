"""The ``least_loaded`` strategy: the instance with the fewest requests in flight.

The count is this router's own (added when routed, freed when the stream ends), so it
is exact for the requests this router sends and needs no reports. Ties go to the
instance whose last report shows fewer active KV blocks, then to a seeded random pick.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from dyn.discovery.base import Instance
from dyn.errors import RoutingError
from dyn.kv.events import WorkerLoad
from dyn.routing.base import RouteRequest, RoutingStrategy, WorkerScore
from dyn.routing.simple import Direct

__all__ = ["LeastLoaded"]


class LeastLoaded(RoutingStrategy):
    """Fewest in-flight requests; then fewest reported active blocks; then random."""

    name: ClassVar[str] = "least_loaded"

    def __init__(self, options: Mapping[str, Any] | None = None, *, seed: int | None = None):
        super().__init__(options, seed=seed)
        unknown = sorted(set(self.options) - {"seed"})
        if unknown:
            raise RoutingError(
                f"unknown option {', '.join(map(repr, unknown))} for the least_loaded "
                "strategy; valid options: seed"
            )
        self._rng = random.Random(self.options.get("seed", seed))
        self._requests: dict[str, str] = {}  # request id -> instance id
        self._in_flight: dict[str, int] = {}
        self._loads: dict[str, WorkerLoad] = {}

    def _key(self, instance_id: str) -> tuple[int, int]:
        load = self._loads.get(instance_id)
        return self._in_flight.get(instance_id, 0), load.active_blocks if load else 0

    def _best(self, candidates: Sequence[Instance]) -> list[int]:
        keys = [self._key(c.instance_id) for c in candidates]
        best = min(keys)
        return [i for i, key in enumerate(keys) if key == best]

    def select(self, candidates: Sequence[Instance], request: RouteRequest) -> Instance:
        if request.instance_id is not None:
            return Direct.pick(candidates, request.instance_id)
        best = self._best(candidates)
        return candidates[best[0] if len(best) == 1 else self._rng.choice(best)]

    def explain(self, candidates: Sequence[Instance], request: RouteRequest) -> list[WorkerScore]:
        if request.instance_id is not None:
            return super().explain(candidates, request)
        best = self._best(candidates)
        # A tie is settled by a random draw, so only a sole best is marked.
        return [
            WorkerScore(
                c.instance_id,
                decode_blocks=float(self._key(c.instance_id)[1]),
                cost=float(self._in_flight.get(c.instance_id, 0)),
                chosen=best == [i],
                notes=f"{len(best)} tied" if len(best) > 1 and i in best else "",
            )
            for i, c in enumerate(candidates)
        ]

    def on_routed(self, instance: Instance, request: RouteRequest) -> None:
        self.on_finished(instance, request)  # a request sent again counts once
        self._requests[request.request_id] = instance.instance_id
        self._in_flight[instance.instance_id] = self._in_flight.get(instance.instance_id, 0) + 1
        self.record_decision(instance.instance_id, request)

    def on_finished(self, instance: Instance, request: RouteRequest) -> None:
        worker = self._requests.pop(request.request_id, None)
        if worker is None:
            return
        left = self._in_flight[worker] - 1
        if left:
            self._in_flight[worker] = left
        else:
            del self._in_flight[worker]

    def on_load(self, instance_id: str, load: WorkerLoad) -> None:
        self._loads[instance_id] = load

    def on_instances(self, instance_ids: Sequence[str]) -> None:
        live = set(instance_ids)
        for rid, worker in list(self._requests.items()):
            if worker not in live:
                del self._requests[rid]
        for table in (self._in_flight, self._loads):
            for worker in set(table) - live:
                del table[worker]

    def describe(self) -> dict[str, dict[str, float]]:
        workers = sorted(set(self._in_flight) | set(self._loads))
        result: dict[str, dict[str, float]] = {}
        for worker in workers:
            row: dict[str, float] = {"requests": self._in_flight.get(worker, 0)}
            load = self._loads.get(worker)
            if load is not None:
                row.update(reported_active_blocks=load.active_blocks, reported_waiting=load.waiting)
            result[worker] = row
        return result
