"""Router replica sync: KV routers that share one pool of workers share their in-flight load.

Each router counts the requests it has sent and not yet seen finish (the
:class:`~dyn.routing.kv.tracker.LoadTracker`). With several routers in front of the same
workers, each would see only its own share of that load, and two of them would happily
send the same new prefix to two different workers. So each router tells the others what
it adds, whose prefill is done and what it frees (docs/kv-routing.md), and applies what they
tell it to its own tracker under keys of their own, ``(router_id, flight)``, so a peer's
request never collides with a local one.

Messages go in batches tagged with the sending router's id, an epoch and a sequence
number. A router ignores its own batches; a batch whose ``(epoch, seq)`` is not newer
than the last one applied from that router is a duplicate or stale and is dropped, so
applying a batch twice changes nothing. Each message is idempotent on its own too (an add
of a flight already held, a free of one unknown). A *snapshot* batch lists every flight
its sender has in flight and replaces whatever the receiver held from it: it is how a
new peer, or one that missed messages, catches up. A new epoch means the sender's router
was replaced: what it sent before is dropped.

A peer's contributions are dropped when its instance leaves discovery
(:meth:`ReplicaSync.drop_peer`) or when nothing came from it for ``peer_ttl_s``
(:meth:`ReplicaSync.expire`); peers send a batch at least every :data:`HEARTBEAT_S`,
empty if need be. This module is pure: the carrying is the processor's
(:mod:`dyn.roles.replica_sync`) or the simulator's.

Blocks travel as their local (xxh3) hashes, defined for every process alike; the chain
keys the tracker and index use are rebuilt from them on arrival.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from dyn.routing.kv.indexer import chain_keys
from dyn.routing.kv.tracker import LoadTracker

__all__ = [
    "HEARTBEAT_S",
    "PEER_TTL_S",
    "ReplicaSync",
    "SyncAdd",
    "SyncBatch",
    "SyncFree",
    "SyncMessage",
    "SyncPrefillDone",
]

# A peer sends something at least this often; one silent for PEER_TTL_S is taken for
# gone (a crash that discovery has not noticed yet). dyn's own numbers: a few missed
# heartbeats, well under the 120 s an approximate-mode block lives (docs/kv-routing.md).
HEARTBEAT_S = 1.0
PEER_TTL_S = 10.0


class SyncAdd(msgspec.Struct, tag="add", array_like=True, frozen=True):
    """The sender routed flight ``flight`` to ``worker``."""

    flight: int
    worker: str
    local: list[int]  # the prompt's full blocks, by local hash
    extra_blocks: int  # blocks not shareable (the prompt's partial last block)
    prefill_tokens: int  # tokens the worker has to prefill; 0 once the first token came


class SyncPrefillDone(msgspec.Struct, tag="prefill_done", array_like=True, frozen=True):
    """The first token of flight ``flight`` came back."""

    flight: int


class SyncFree(msgspec.Struct, tag="free", array_like=True, frozen=True):
    """Flight ``flight`` ended (completion, error or cancel)."""

    flight: int


SyncMessage = SyncAdd | SyncPrefillDone | SyncFree


class SyncBatch(msgspec.Struct, frozen=True):
    """Messages from one router, in the order it produced them."""

    router_id: str
    epoch: int
    seq: int
    messages: list[SyncMessage] = msgspec.field(default_factory=list)
    snapshot: bool = False  # messages are all the sender has in flight: replace, not add


@dataclass
class _Local:
    flight: int
    add: SyncAdd
    prefill_done: bool = False


@dataclass
class _Peer:
    epoch: int
    seq: int
    seen: float
    flights: set[int] = field(default_factory=set)


class ReplicaSync:
    """One router's side of the exchange: records what it does, applies what peers did.

    Args:
        router_id: this router's id (its processor's instance id); batches carrying it
            are ignored.
        epoch: bumped each time the owner replaces its router, so peers drop what the
            old one told them.
        tracker: where peers' flights are counted; ``None`` for a strategy that keeps no
            in-flight load (it still answers peers, with empty snapshots).
        on_add: called with ``(worker, chain keys, local hashes)`` for each peer flight
            added (``kv_approx`` guesses its index from it).
        clock: seconds, for peer expiry.
        peer_ttl_s: a peer silent this long is dropped by :meth:`expire`.
    """

    def __init__(
        self,
        router_id: str,
        *,
        epoch: int = 0,
        tracker: LoadTracker | None = None,
        on_add: Callable[[str, list[int], list[int]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        peer_ttl_s: float = PEER_TTL_S,
    ) -> None:
        self.router_id = router_id
        self.epoch = epoch
        self.tracker = tracker
        self.on_add = on_add
        self.clock = clock
        self.peer_ttl_s = peer_ttl_s
        self._flights = 0
        self._seq = 0
        self._local: dict[str, _Local] = {}  # request id -> its current flight
        self._outbox: list[SyncMessage] = []
        self._peers: dict[str, _Peer] = {}
        # Called when the outbox stops being empty: the carrier's cue to send soon.
        self.on_pending: Callable[[], None] | None = None

    def _post(self, message: SyncMessage) -> None:
        if not self._outbox and self.on_pending is not None:
            self.on_pending()
        self._outbox.append(message)

    # -- what this router did ----------------------------------------------------------

    def local_add(
        self,
        request_id: str,
        worker: str,
        local: Sequence[int],
        extra_blocks: int,
        prefill_tokens: int,
    ) -> None:
        """This router sent ``request_id`` to ``worker`` (again: it moved there)."""
        self.local_free(request_id)
        self._flights += 1
        add = SyncAdd(self._flights, worker, list(local), extra_blocks, prefill_tokens)
        self._local[request_id] = _Local(self._flights, add)
        self._post(add)

    def local_prefill_done(self, request_id: str) -> None:
        entry = self._local.get(request_id)
        if entry is None or entry.prefill_done:
            return
        entry.prefill_done = True
        self._post(SyncPrefillDone(entry.flight))

    def local_free(self, request_id: str) -> None:
        entry = self._local.pop(request_id, None)
        if entry is not None:
            self._post(SyncFree(entry.flight))

    @property
    def pending(self) -> bool:
        """Whether messages wait to be sent."""
        return bool(self._outbox)

    def take(self) -> SyncBatch:
        """The messages produced since the last call, as one batch for every peer (empty:
        a heartbeat)."""
        messages, self._outbox = self._outbox, []
        self._seq += 1
        return SyncBatch(self.router_id, self.epoch, self._seq, messages)

    def snapshot(self) -> SyncBatch:
        """Everything this router has in flight now, replacing what a peer holds from it."""
        self._seq += 1
        messages: list[SyncMessage] = [
            msgspec.structs.replace(entry.add, prefill_tokens=0)
            if entry.prefill_done
            else entry.add
            for entry in self._local.values()
        ]
        return SyncBatch(self.router_id, self.epoch, self._seq, messages, snapshot=True)

    @property
    def in_flight(self) -> int:
        """How many of this router's own requests are in flight."""
        return len(self._local)

    # -- what peers did ----------------------------------------------------------------

    def apply(self, batch: SyncBatch) -> bool:
        """Apply a peer's batch; True if the peer is new to this router or started a new
        epoch, and so lacks this router's state: send it a snapshot."""
        if batch.router_id == self.router_id:
            return False
        peer = self._peers.get(batch.router_id)
        fresh = peer is None or batch.epoch > peer.epoch
        if peer is not None and not fresh and (batch.epoch < peer.epoch or batch.seq <= peer.seq):
            return False  # a duplicate, or overtaken by a newer batch
        if peer is None or fresh:
            if peer is not None:
                self._forget(batch.router_id, peer)
            peer = self._peers[batch.router_id] = _Peer(batch.epoch, batch.seq, self.clock())
        peer.seq, peer.seen = batch.seq, self.clock()
        if batch.snapshot:
            listed = {m.flight for m in batch.messages}
            for flight in peer.flights - listed:
                self._free(batch.router_id, peer, flight)
        for message in batch.messages:
            if isinstance(message, SyncAdd):
                self._add(batch.router_id, peer, message)
            elif isinstance(message, SyncPrefillDone):
                if message.flight in peer.flights and self.tracker is not None:
                    self.tracker.prefill_done((batch.router_id, message.flight))
            else:
                self._free(batch.router_id, peer, message.flight)
        return fresh

    def _add(self, router_id: str, peer: _Peer, add: SyncAdd) -> None:
        key = (router_id, add.flight)
        if add.flight in peer.flights:
            if add.prefill_tokens == 0 and self.tracker is not None:
                self.tracker.prefill_done(key)  # a snapshot may know more than we do
            return
        peer.flights.add(add.flight)
        keys = chain_keys(add.local)
        if self.tracker is not None:
            self.tracker.add(key, add.worker, keys, add.extra_blocks, add.prefill_tokens)
        if self.on_add is not None:
            self.on_add(add.worker, keys, add.local)

    def _free(self, router_id: str, peer: _Peer, flight: int) -> None:
        if flight in peer.flights:
            peer.flights.discard(flight)
            if self.tracker is not None:
                self.tracker.finish((router_id, flight))

    def _forget(self, router_id: str, peer: _Peer) -> None:
        for flight in list(peer.flights):
            self._free(router_id, peer, flight)

    def drop_peer(self, router_id: str) -> None:
        """Forget everything ``router_id`` told (it left discovery)."""
        peer = self._peers.pop(router_id, None)
        if peer is not None:
            self._forget(router_id, peer)

    def expire(self) -> list[str]:
        """Drop the peers silent for longer than ``peer_ttl_s``; return their ids."""
        deadline = self.clock() - self.peer_ttl_s
        gone = [rid for rid, peer in self._peers.items() if peer.seen < deadline]
        for router_id in gone:
            self.drop_peer(router_id)
        return gone

    def peers(self) -> dict[str, int]:
        """Each known peer and how many of its flights this router holds."""
        return {rid: len(peer.flights) for rid, peer in self._peers.items()}
