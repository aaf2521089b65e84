"""Carries router replica sync between the replicas of one processor component.

Each replica finds the others through discovery of its own component (the instances
serving :data:`SYNC_ENDPOINT`, itself excepted) and pushes them its sync batches
(:mod:`dyn.routing.kv.sync`) over the runtime's ordinary transport: one sending task per
peer, so a peer receives batches in the order they were made, and a slow or dead peer
holds up no other. Messages are gathered for :data:`BATCH_WINDOW_S` so a burst of
requests costs one call per peer; with nothing to say a replica still sends an empty
batch every :data:`~dyn.routing.kv.sync.HEARTBEAT_S`. A peer first gets a snapshot of
everything in flight, and again after any failed send (it may have missed a batch) or
when it shows up with a fresh router.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from dyn.contracts.processor import ROUTER_SYNC
from dyn.errors import DynError
from dyn.routing.base import RouteRequest, RoutingStrategy
from dyn.routing.kv.router import KvRouter
from dyn.routing.kv.sync import HEARTBEAT_S, ReplicaSync, SyncBatch
from dyn.runtime.client import Client

__all__ = ["BATCH_WINDOW_S", "SYNC_ENDPOINT", "ReplicaLink"]

SYNC_ENDPOINT = ROUTER_SYNC.name
# dyn's own numbers: a window well under a prefill (tens of ms) so peers hear of a
# request before the worker's own KV events would tell them; a send that takes longer
# than SEND_TIMEOUT_S counts as failed, and is retried (as a snapshot) after RETRY_S.
BATCH_WINDOW_S = 0.002
SEND_TIMEOUT_S = 5.0
RETRY_S = 0.5


@dataclass
class _Peer:
    instance_id: str
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    batches: list[SyncBatch] = field(default_factory=list)
    wake: anyio.Event = field(default_factory=anyio.Event)
    needs_snapshot: bool = True


class ReplicaLink:
    """One processor replica's end of the exchange.

    Args:
        peers: a client for this replica's own component (it lists the other replicas).
        instance_id: this replica's instance id, which is also its router id.
        log: where failed sends are noted.
    """

    def __init__(
        self, peers: Client, instance_id: str, log: logging.LoggerAdapter[logging.Logger]
    ) -> None:
        self.peers = peers
        self.instance_id = instance_id
        self.log = log
        self.sync = ReplicaSync(instance_id)
        self._epoch = 0
        self._peers: dict[str, _Peer] = {}
        self._wake = anyio.Event()

    def attach(self, router: RoutingStrategy) -> None:
        """Share ``router``'s in-flight load from now on (it replaces any earlier one).

        A strategy that tracks no load still takes part: it tells its peers it has
        nothing in flight, which clears what its predecessor told them.
        """
        self._epoch += 1
        if isinstance(router, KvRouter):
            self.sync = router.enable_sync(self.instance_id, epoch=self._epoch)
        else:
            self.sync = ReplicaSync(self.instance_id, epoch=self._epoch)
        self.sync.on_pending = self._notify
        for peer in self._peers.values():
            self._resync(peer)

    def receive(self, batch: SyncBatch) -> None:
        """Apply a peer's batch; a peer new to this router is sent a snapshot."""
        if self.sync.apply(batch):
            peer = self._peers.get(batch.router_id)
            if peer is not None:
                self._resync(peer)

    def describe(self) -> dict[str, object]:
        return {
            "router_id": self.instance_id,
            "epoch": self._epoch,
            "in_flight": self.sync.in_flight,
            "peers": self.sync.peers(),
        }

    def _notify(self) -> None:
        self._wake.set()

    @staticmethod
    def _resync(peer: _Peer) -> None:
        peer.needs_snapshot = True
        peer.wake.set()

    # -- tasks -------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the other replicas and send them batches, until cancelled."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._follow, tasks)
            while True:
                with anyio.move_on_after(HEARTBEAT_S):
                    await self._wake.wait()
                self._wake = anyio.Event()
                await anyio.sleep(BATCH_WINDOW_S)  # let the rest of a burst join the batch
                batch = self.sync.take()  # empty when woken by the timeout: a heartbeat
                for peer in self._peers.values():
                    peer.batches.append(batch)
                    peer.wake.set()
                for gone in self.sync.expire():
                    self.log.info("router replica %s went silent; its load is dropped", gone)

    async def _follow(self, tasks: TaskGroup) -> None:
        while True:
            live = {i.instance_id for i in self.peers.instances(SYNC_ENDPOINT)}
            live.discard(self.instance_id)
            for instance_id in live - self._peers.keys():
                peer = self._peers[instance_id] = _Peer(instance_id)
                peer.wake.set()
                tasks.start_soon(self._send, peer)
            for instance_id in self._peers.keys() - live:
                self._peers.pop(instance_id).scope.cancel()
                self.sync.drop_peer(instance_id)
            await self.peers.changed()

    async def _send(self, peer: _Peer) -> None:
        route = RouteRequest(f"router-sync-{peer.instance_id}", instance_id=peer.instance_id)
        with peer.scope:
            while True:
                await peer.wake.wait()
                peer.wake = anyio.Event()
                if peer.needs_snapshot:
                    # Everything in flight now: it supersedes whatever waited.
                    peer.needs_snapshot = False
                    peer.batches.clear()
                    batch = self.sync.snapshot()
                elif peer.batches:
                    batch = _merge(peer.batches)
                    peer.batches = []
                else:
                    continue
                try:
                    with anyio.fail_after(SEND_TIMEOUT_S):
                        async with self.peers.stream(ROUTER_SYNC, batch, route=route) as acks:
                            async for _ in acks:
                                pass
                except (DynError, TimeoutError) as exc:
                    self.log.debug("router sync to %s failed: %s", peer.instance_id, exc)
                    await anyio.sleep(RETRY_S)
                    self._resync(peer)  # it may have missed this batch


def _merge(batches: list[SyncBatch]) -> SyncBatch:
    """Batches of one epoch as one, in order (a replaced router resyncs by snapshot)."""
    if len(batches) == 1:
        return batches[0]
    last = batches[-1]
    messages = [message for batch in batches for message in batch.messages]
    return SyncBatch(last.router_id, last.epoch, last.seq, messages)
