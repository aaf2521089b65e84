"""The ``kv_approx`` strategy: the ``kv`` cost without KV events.

After routing a request, the router assumes the chosen worker now caches the request's
blocks, for ``ttl_s`` seconds (refreshed whenever a request with that prefix goes there
again), as Dynamo's approximate mode does (docs/kv-routing.md). Time comes from an injected
clock so that tests and the virtual-time simulator control expiry.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from dyn.kv.events import KvEvent
from dyn.routing.kv.router import KvRouter, _Plan

__all__ = ["DEFAULT_TTL_S", "KvApproxRouter"]

DEFAULT_TTL_S = 120.0  # Dynamo's approximate-mode block lifetime (docs/kv-routing.md)


class KvApproxRouter(KvRouter):
    """``kv`` with an index guessed from its own routing decisions."""

    name: ClassVar[str] = "kv_approx"
    OPTIONS: ClassVar[tuple[str, ...]] = (*KvRouter.OPTIONS, "ttl_s")

    def __init__(
        self,
        options: Mapping[str, Any] | None = None,
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        options = dict(options or {})
        options.setdefault("ttl_s", DEFAULT_TTL_S)
        super().__init__(options, seed=seed)
        self._clock = clock
        self._expires: dict[str, dict[int, float]] = {}  # worker -> block key -> deadline
        self._heap: list[tuple[float, str, int]] = []  # may hold superseded deadlines

    def _expire(self) -> None:
        # Expiring is bookkeeping, not a decision: a block past its deadline counts for
        # nothing whether or not it was dropped yet, so queries may run it too.
        now = self._clock()
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, worker, key = heapq.heappop(heap)
            expires = self._expires.get(worker)
            if expires is None or expires.get(key) != deadline:
                continue  # refreshed since, or the worker left
            del expires[key]
            self.index.remove(worker, (key,))

    def cached_overlaps(self, local: Sequence[int], keys: Sequence[int]) -> dict[str, int]:
        self._expire()
        return self.index.match_keys(keys)

    def routed(self, worker: str, plan: _Plan) -> None:
        self._guess(worker, plan.keys, plan.local)

    def peer_routed(self, worker: str, keys: list[int], local: list[int]) -> None:
        # A peer router's decision says as much about the worker's cache as our own.
        self._guess(worker, keys, local)

    def _guess(self, worker: str, keys: Sequence[int], local: Sequence[int]) -> None:
        if not keys:
            return
        self._expire()
        deadline = self._clock() + self.settings.ttl_s
        # The block hash of a guessed block is its chain key: unique per prefix.
        self.index.store(worker, None, list(zip(keys, local, strict=True)))
        expires = self._expires.setdefault(worker, {})
        for key in keys:
            expires[key] = deadline
            heapq.heappush(self._heap, (deadline, worker, key))

    def on_kv_event(self, instance_id: str, event: KvEvent) -> None:
        """Events are ignored: this strategy is for workers that publish none."""

    def on_instances(self, instance_ids: Sequence[str]) -> None:
        super().on_instances(instance_ids)
        for worker in set(self._expires) - set(instance_ids):
            del self._expires[worker]
