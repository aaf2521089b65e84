"""The ``kv`` strategy: route to the worker whose cache and load make the request cheapest.

The radix index (fed by the workers' KV events) gives each worker's cached overlap with
the prompt; the tracker gives the load this router has in flight there; the cost function
weighs both (docs/kv-routing.md). ``KvApproxRouter`` keeps the same machinery but guesses
the index from its own decisions instead of events. With :meth:`KvRouter.enable_sync`
a router shares its in-flight load with the other replicas routing to the same workers
(:mod:`dyn.routing.kv.sync`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from dyn.discovery.base import Instance
from dyn.errors import RoutingError
from dyn.kv.events import KvEvent, WorkerLoad
from dyn.kv.hashing import local_block_hashes
from dyn.routing.base import RouteRequest, RoutingStrategy, WorkerScore
from dyn.routing.kv.cost import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_OVERLAP_SCORE_WEIGHT,
    DEFAULT_TEMPERATURE,
    Cost,
    choose,
    worker_cost,
)
from dyn.routing.kv.indexer import RadixIndex, chain_keys
from dyn.routing.kv.sync import ReplicaSync
from dyn.routing.kv.tracker import LoadTracker
from dyn.routing.simple import Direct

__all__ = ["KvRouter", "KvSettings", "RoutePlan", "block_size_of"]

_PENDING_LIMIT = 4096  # plans kept between select and on_routed; the client calls both at once


@dataclass(frozen=True)
class KvSettings:
    overlap_score_weight: float = DEFAULT_OVERLAP_SCORE_WEIGHT
    temperature: float = DEFAULT_TEMPERATURE
    block_size: int = DEFAULT_BLOCK_SIZE  # used only when no worker declares its own
    seed: int | None = None
    ttl_s: float = 0.0  # kv_approx only

    @classmethod
    def parse(cls, strategy: str, options: Mapping[str, Any], valid: Sequence[str]) -> KvSettings:
        unknown = sorted(set(options) - set(valid))
        if unknown:
            names = ", ".join(repr(name) for name in unknown)
            raise RoutingError(
                f"unknown option {names} for the {strategy} strategy; "
                f"valid options: {', '.join(sorted(valid))}"
            )
        values: dict[str, Any] = {}
        for key, value in options.items():
            kind = int if key in ("block_size", "seed") else float
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RoutingError(f"{strategy} option {key} must be a number, got {value!r}")
            if kind is int and value != int(value):
                raise RoutingError(f"{strategy} option {key} must be a whole number, got {value}")
            values[key] = kind(value)
        settings = cls(**values)
        if settings.block_size < 1:
            raise RoutingError(f"{strategy} option block_size must be at least 1")
        if settings.temperature < 0 or settings.overlap_score_weight < 0 or settings.ttl_s < 0:
            raise RoutingError(
                f"{strategy} options temperature, overlap_score_weight and ttl_s "
                "must not be negative"
            )
        return settings


def block_size_of(candidates: Sequence[Instance], fallback: int) -> int:
    """The block size the candidates registered, or ``fallback`` if none did.

    Raises:
        RoutingError: candidates declare different sizes; hashing at either would
            silently zero the other's overlap, so the router refuses to guess.
    """
    declared: dict[str, Any] = {
        c.instance_id: c.metadata["block_size"] for c in candidates if "block_size" in c.metadata
    }
    sizes = set(declared.values())
    if not sizes:
        return fallback
    if len(sizes) > 1:
        listing = ", ".join(f"{iid}={size}" for iid, size in declared.items())
        raise RoutingError(
            f"workers disagree on block_size: {listing}; the kv router needs one block size"
        )
    (size,) = sizes
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise RoutingError(f"workers registered an invalid block_size {size!r}")
    return size


@dataclass(frozen=True)
class RoutePlan:
    """What the router worked out for one request: its block keys, each worker's cached
    overlap and score. Subclasses receive it in :meth:`KvRouter.routed`."""

    block_size: int
    keys: list[int]
    local: list[int]
    extra_blocks: int  # the prompt's partial last block, if any
    overlaps: dict[str, int]
    workers: list[str]  # the candidates, in order
    costs: list[Cost]  # each candidate's, in the same order

    @property
    def scores(self) -> list[WorkerScore]:
        """Each candidate's score, built when asked (explaining): routing reads costs."""
        return [
            WorkerScore(
                worker,
                overlap_blocks=self.overlaps[worker],
                prefill_blocks=cost.prefill_blocks,
                decode_blocks=cost.decode_blocks,
                cost=cost.cost,
            )
            for worker, cost in zip(self.workers, self.costs, strict=True)
        ]


class KvRouter(RoutingStrategy):
    """Lowest cost of cached overlap and tracked load (docs/kv-routing.md)."""

    name: ClassVar[str] = "kv"
    OPTIONS: ClassVar[tuple[str, ...]] = (
        "block_size",
        "overlap_score_weight",
        "seed",
        "temperature",
    )

    def __init__(self, options: Mapping[str, Any] | None = None, *, seed: int | None = None):
        super().__init__(options, seed=seed)
        self.settings = KvSettings.parse(self.name, self.options, self.OPTIONS)
        self.index = RadixIndex()
        self.tracker = LoadTracker()
        self.loads: dict[str, WorkerLoad] = {}
        chosen_seed = self.settings.seed if self.settings.seed is not None else seed
        self._rng = random.Random(chosen_seed)
        self._pending: dict[str, tuple[str, RoutePlan]] = {}
        self.sync: ReplicaSync | None = None

    def enable_sync(
        self, router_id: str, *, epoch: int = 0, clock: Callable[[], float] = time.monotonic
    ) -> ReplicaSync:
        """Share this router's in-flight load with other routers of the same workers
        (:mod:`dyn.routing.kv.sync`); the caller carries the batches."""
        self.sync = ReplicaSync(
            router_id, epoch=epoch, tracker=self.tracker, on_add=self.peer_routed, clock=clock
        )
        return self.sync

    # -- what subclasses change --------------------------------------------------------

    def cached_overlaps(self, local: Sequence[int], keys: Sequence[int]) -> dict[str, int]:
        """Blocks of the prompt each worker has cached."""
        return self.index.match_keys(keys)

    # -- choosing ----------------------------------------------------------------------

    def _prompt_blocks(
        self, candidates: Sequence[Instance], request: RouteRequest
    ) -> tuple[int, list[int], list[int], int, dict[str, int]]:
        """The prompt's block size, local hashes, chain keys, partial last block (0 or 1)
        and each worker's cached overlap."""
        block_size = block_size_of(candidates, self.settings.block_size)
        tokens = request.tokens
        local = local_block_hashes(tokens, block_size)
        keys = chain_keys(local)
        extra = 1 if len(tokens) % block_size else 0
        return block_size, local, keys, extra, self.cached_overlaps(local, keys)

    def _overlap(self, worker: str, keys: Sequence[int], cached: dict[str, int]) -> tuple[int, int]:
        """``worker``'s overlap with the prompt (cached or being computed there) and the
        part of it that requests in flight there hold."""
        tracker = self.tracker
        inflight = tracker.inflight_overlap(worker, keys) if tracker.flight(worker).refs else 0
        return max(cached.get(worker, 0), inflight), inflight

    def _plan(self, candidates: Sequence[Instance], request: RouteRequest) -> RoutePlan:
        settings = self.settings
        tokens = request.tokens
        block_size, local, keys, extra, cached = self._prompt_blocks(candidates, request)
        overlaps: dict[str, int] = {}
        workers: list[str] = []
        plan_costs: list[Cost] = []
        tracker = self.tracker
        # Candidates in the same state (idle ones, above all) have the same cost: computed
        # once per state, so a request's cost grows little with the number of workers.
        costs: dict[tuple[int, int, int, int], Cost] = {}
        for candidate in candidates:
            worker = candidate.instance_id
            flight = tracker.flight(worker)
            overlap, inflight = self._overlap(worker, keys, cached)
            overlaps[worker] = overlap
            state = (overlap, inflight, flight.prefill_tokens, flight.active_blocks)
            cost = costs.get(state)
            if cost is None:
                cost = costs[state] = worker_cost(
                    isl_tokens=len(tokens),
                    block_size=block_size,
                    overlap_blocks=overlap,
                    active_prefill_tokens=flight.prefill_tokens,
                    active_blocks=flight.active_blocks,
                    new_blocks=len(keys) + extra - inflight,
                    overlap_score_weight=settings.overlap_score_weight,
                )
            workers.append(worker)
            plan_costs.append(cost)
        return RoutePlan(block_size, keys, local, extra, overlaps, workers, plan_costs)

    def select(self, candidates: Sequence[Instance], request: RouteRequest) -> Instance:
        if request.instance_id is not None:
            return Direct.pick(candidates, request.instance_id)
        plan = self._plan(candidates, request)
        index = choose([c.cost for c in plan.costs], self.settings.temperature, self._rng)
        chosen = candidates[index]
        self.remember(request.request_id, chosen.instance_id, plan)
        return chosen

    def remember(self, request_id: str, worker: str, plan: RoutePlan) -> None:
        """Keep the plan of a request routed to ``worker`` until ``on_routed``."""
        if len(self._pending) >= _PENDING_LIMIT:
            del self._pending[next(iter(self._pending))]
        self._pending[request_id] = (worker, plan)

    def explain(self, candidates: Sequence[Instance], request: RouteRequest) -> list[WorkerScore]:
        if request.instance_id is not None:
            return super().explain(candidates, request)
        scores = self._plan(candidates, request).scores
        best = min(s.cost for s in scores)
        ties = sum(1 for s in scores if s.cost == best)
        temperature = self.settings.temperature
        note = (
            f"sampled at temperature {temperature:g}; marked: the most likely"
            if temperature > 0
            else (f"a random pick among {ties} equal costs" if ties > 1 else "")
        )
        marked = next(i for i, s in enumerate(scores) if s.cost == best)
        return [
            WorkerScore(
                s.instance_id,
                overlap_blocks=s.overlap_blocks,
                prefill_blocks=s.prefill_blocks,
                decode_blocks=s.decode_blocks,
                cost=s.cost,
                chosen=i == marked,
                notes=note if i == marked else "",
            )
            for i, s in enumerate(scores)
        ]

    # -- tracking ----------------------------------------------------------------------

    def on_routed(self, instance: Instance, request: RouteRequest) -> None:
        worker = instance.instance_id
        pending = self._pending.pop(request.request_id, None)
        plan = pending[1] if pending is not None and pending[0] == worker else None
        if plan is None:  # a direct target, or the caller overrode the choice
            plan = self._plan([instance], request)
        overlap = plan.overlaps[worker]
        prefill = max(0, len(request.tokens) - overlap * plan.block_size)
        self.tracker.add(request.request_id, worker, plan.keys, plan.extra_blocks, prefill)
        if self.sync is not None:
            self.sync.local_add(request.request_id, worker, plan.local, plan.extra_blocks, prefill)
        if self.decisions is not None:
            # The plan's own lists: kept as they are, so recording costs O(1).
            self.decisions.record(
                request.request_id,
                worker,
                self.name,
                workers=plan.workers,
                overlaps=plan.overlaps,
                costs=plan.costs,
                terms=getattr(plan, "terms", ()),
            )
        self.routed(worker, plan)

    def routed(self, worker: str, plan: RoutePlan) -> None:
        """Hook for subclasses: ``plan``'s request now runs on ``worker``."""

    def peer_routed(self, worker: str, keys: list[int], local: list[int]) -> None:
        """Hook for subclasses: a peer router sent a request of these blocks to ``worker``."""

    def on_first_item(self, instance: Instance, request: RouteRequest) -> None:
        self.tracker.prefill_done(request.request_id)
        if self.sync is not None:
            self.sync.local_prefill_done(request.request_id)

    def on_finished(self, instance: Instance, request: RouteRequest) -> None:
        self.tracker.finish(request.request_id)
        self._pending.pop(request.request_id, None)
        if self.sync is not None:
            self.sync.local_free(request.request_id)

    def on_kv_event(self, instance_id: str, event: KvEvent) -> None:
        self.index.apply(instance_id, event)

    def on_load(self, instance_id: str, load: WorkerLoad) -> None:
        self.loads[instance_id] = load

    def on_instances(self, instance_ids: Sequence[str]) -> None:
        live = set(instance_ids)
        known = set(self.index.workers) | set(self.tracker.workers) | set(self.loads)
        for worker in known - live:
            self.index.remove_worker(worker)
            self.tracker.remove_worker(worker)
            self.loads.pop(worker, None)

    def describe(self) -> dict[str, dict[str, float]]:
        workers = sorted(set(self.index.workers) | set(self.tracker.workers) | set(self.loads))
        result: dict[str, dict[str, float]] = {}
        for worker in workers:
            flight = self.tracker.flight(worker)
            row: dict[str, float] = {
                "cached_blocks": self.index.block_count(worker),
                "active_blocks": flight.active_blocks,
                "prefill_tokens": flight.prefill_tokens,
                "requests": flight.requests,
            }
            load = self.loads.get(worker)
            if load is not None:
                row.update(
                    reported_active_blocks=load.active_blocks,
                    reported_total_blocks=load.total_blocks,
                    reported_waiting=load.waiting,
                    reported_running=load.running,
                    reported_prefix_hit_rate=load.prefix_hit_rate,
                )
            result[worker] = row
        return result
