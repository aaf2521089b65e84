"""The load a KV router has sent to each worker and not yet seen finish.

Reported load arrives late (a worker publishes it every so often); a router that routes
many requests between two reports must count its own. Following docs/kv-routing.md, a
request is added when routed, its prefill is marked done at the first token, and it is
freed when its stream ends (completion, error or cancel).

Blocks are counted once per worker however many in-flight requests share them, as the
engine's reference-counted cache stores them once (Dynamo's ``ActiveSequences`` counts
unique blocks the same way). Blocks are identified by their chain keys
(:func:`dyn.routing.kv.indexer.chain_keys`), so holding key ``i`` implies holding every
key before it, which lets :meth:`LoadTracker.inflight_overlap` binary-search.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["FlightKey", "LoadTracker", "WorkerFlight"]

# A request this router sent is keyed by its request id; one a peer router sent, by the
# peer's id and its flight number (:mod:`dyn.routing.kv.sync`), so the two never collide.
FlightKey = str | tuple[str, int]


@dataclass
class _Request:
    worker: str
    keys: tuple[int, ...]  # the prompt's full blocks, by chain key
    extra_blocks: int  # blocks not shareable: the partial last block of the prompt
    prefill_tokens: int  # tokens still to prefill; 0 once the first token came back


@dataclass
class WorkerFlight:
    """One worker's in-flight load as this router tracks it."""

    requests: int = 0
    prefill_tokens: int = 0
    extra_blocks: int = 0
    refs: dict[int, int] = field(default_factory=dict)  # block key -> requests holding it
    # Prompt blocks summed over the requests, shared ones counted per request: what their
    # decoding reads, as opposed to what the cache stores (``active_blocks``).
    sequence_blocks: int = 0

    @property
    def active_blocks(self) -> int:
        return len(self.refs) + self.extra_blocks


_IDLE = WorkerFlight()


class LoadTracker:
    """In-flight requests per worker, keyed by request id."""

    def __init__(self) -> None:
        self._requests: dict[FlightKey, _Request] = {}
        self._workers: dict[str, WorkerFlight] = {}

    def flight(self, worker: str) -> WorkerFlight:
        """``worker``'s tracked load (an idle one if nothing is in flight there)."""
        return self._workers.get(worker, _IDLE)

    @property
    def workers(self) -> list[str]:
        return list(self._workers)

    def add(
        self,
        request_id: FlightKey,
        worker: str,
        keys: Sequence[int],
        extra_blocks: int,
        prefill_tokens: int,
    ) -> None:
        """``request_id`` was sent to ``worker`` (a request sent again moves there)."""
        if request_id in self._requests:
            self.finish(request_id)
        request = _Request(worker, tuple(keys), extra_blocks, prefill_tokens)
        self._requests[request_id] = request
        flight = self._workers.get(worker)
        if flight is None:
            flight = self._workers[worker] = WorkerFlight()
        flight.requests += 1
        flight.prefill_tokens += prefill_tokens
        flight.extra_blocks += extra_blocks
        flight.sequence_blocks += len(request.keys) + extra_blocks
        refs = flight.refs
        for key in request.keys:
            refs[key] = refs.get(key, 0) + 1

    def prefill_done(self, request_id: FlightKey) -> None:
        """The first token of ``request_id`` came back: its prefill is no longer pending."""
        request = self._requests.get(request_id)
        if request is None or not request.prefill_tokens:
            return
        self._workers[request.worker].prefill_tokens -= request.prefill_tokens
        request.prefill_tokens = 0

    def finish(self, request_id: FlightKey) -> None:
        """``request_id`` ended; forgetting an unknown id is not an error."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return
        flight = self._workers[request.worker]
        flight.requests -= 1
        flight.prefill_tokens -= request.prefill_tokens
        flight.extra_blocks -= request.extra_blocks
        flight.sequence_blocks -= len(request.keys) + request.extra_blocks
        refs = flight.refs
        for key in request.keys:
            left = refs[key] - 1
            if left:
                refs[key] = left
            else:
                del refs[key]
        if not flight.requests:
            del self._workers[request.worker]

    def remove_worker(self, worker: str) -> None:
        """Forget ``worker`` and whatever was in flight there (it left)."""
        if self._workers.pop(worker, None) is None:
            return
        gone = [rid for rid, request in self._requests.items() if request.worker == worker]
        for rid in gone:
            del self._requests[rid]

    def inflight_overlap(self, worker: str, keys: Sequence[int]) -> int:
        """How many leading blocks of ``keys`` requests in flight on ``worker`` hold.

        Those blocks are being computed there now: the engine will share them, even
        though the worker has not reported them cached yet.
        """
        refs = self._workers.get(worker, _IDLE).refs
        if not refs or not keys or keys[0] not in refs:
            return 0
        low, high = 1, len(keys)  # keys[:low] are held; find the longest held prefix
        while low < high:
            mid = (low + high + 1) // 2
            if keys[mid - 1] in refs:
                low = mid
            else:
                high = mid - 1
        return low
