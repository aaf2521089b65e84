"""The KV event plane over NATS (``transports/nats.md``, "KV events").

Each worker instance publishes its updates, msgpack-encoded ``WorkerUpdate`` items, on
``dyn.kv.<namespace>.<component>.<instance_id>``; every router replica subscribes to
``dyn.kv.<namespace>.<component>.*``. A publisher sends no snapshot contents (a cache
can outgrow a message): its first item goes out as the load alone, and if it fell so
far behind that its engine restarted its history, it sends an empty update marked
``snapshot``, which tells routers to fetch a snapshot. Routers sequence each worker's
updates with :class:`~dyn.kv.feed.WorkerFeed` and fetch snapshots by calling the
worker's ``kv_events`` endpoint once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, ClassVar

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectSendStream

from dyn.errors import DynError, TransportError
from dyn.kv.events import WorkerUpdate
from dyn.kv.feed import FeedStep, WorkerFeed
from dyn.roles.kv_plane import (
    RESUBSCRIBE_DELAY_S,
    Apply,
    Forget,
    KvEventPlane,
    Log,
    fetch_snapshot,
)
from dyn.runtime.client import Client
from dyn.runtime.component import ComponentInfo
from dyn.runtime.runtime import Runtime

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg

__all__ = ["NatsKvPlane", "kv_subject", "publish_updates"]

# Updates received but not yet applied; past this they are dropped, which the feed
# then sees as a gap (and answers with a snapshot).
MAX_QUEUED_UPDATES = 16384

# How often a router checks whether its NATS connection was re-established.
RECONNECT_CHECK_S = 0.5

_log = logging.getLogger("dyn.kv_plane")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(WorkerUpdate)


def kv_subject(namespace: str, component: str, instance_id: str = "*") -> str:
    """The subject one worker instance publishes on (``*``: every instance's)."""
    return f"dyn.kv.{namespace}.{component}.{instance_id}"


async def _connect(runtime: Runtime, name: str, log: Log) -> NatsClient:
    """A client of the run's NATS, retried until it answers: a server that is restarting
    delays the KV events, it does not stop the role."""
    from dyn.transports.nats import NatsTransport

    transport = runtime.transport
    assert isinstance(transport, NatsTransport)
    while True:
        try:
            return await transport.connect_client(name)
        except TransportError as exc:
            log.warning("KV events: %s; retrying", exc.message)
            await anyio.sleep(RESUBSCRIBE_DELAY_S)


async def publish_updates(
    runtime: Runtime,
    info: ComponentInfo,
    updates: Callable[[], AsyncIterator[WorkerUpdate]],
    log: Log = _log,
) -> None:
    """Publish a worker's updates until cancelled (see the module docstring)."""
    import nats.errors

    subject = kv_subject(info.namespace, info.component, info.instance_id)
    client = await _connect(runtime, f"dyn-kv-{info.instance_id}", log)
    try:
        first = True
        async for update in updates():
            if update.snapshot:
                # Routers fetch snapshots themselves: the first one is history they
                # ask for when they need it; a later one means events were skipped.
                update = WorkerUpdate(load=update.load, snapshot=not first)
            first = False
            try:
                await client.publish(subject, _encoder.encode(update))
            except nats.errors.Error as exc:
                # Lost (the server is away and the reconnect buffer full): routers
                # see the hole as a gap in event ids and fetch a snapshot.
                log.debug("KV update not published on %s: %s", subject, exc)
    finally:
        with anyio.CancelScope(shield=True):
            await client.close()


class NatsKvPlane(KvEventPlane):
    """A router's side: one subscription for every instance of the worker component."""

    name: ClassVar[str] = "nats"

    def __init__(self, runtime: Runtime, workers: Client, log: Log) -> None:
        self.runtime = runtime
        self.workers = workers
        self.log = log
        self.feeds: dict[str, WorkerFeed] = {}
        self._snapshotting: set[str] = set()

    async def follow(self, apply: Apply, forget: Forget) -> None:
        self.feeds, self._snapshotting = {}, set()
        client = await _connect(self.runtime, "dyn-kv-router", self.log)
        send, receive = anyio.create_memory_object_stream[tuple[str, WorkerUpdate]](
            MAX_QUEUED_UPDATES
        )
        with send, receive:
            try:
                subject = kv_subject(self.runtime.namespace, self.workers.component)
                await client.subscribe(subject, cb=self._receiver(send))
                # Subscribed at the server before any snapshot is asked for: every event
                # newer than a snapshot then reaches this router.
                await client.flush()
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self._track_instances, tasks, apply, forget)
                    tasks.start_soon(self._watch_reconnects, client, tasks, apply)
                    async for instance_id, update in receive:
                        feed = self.feeds.get(instance_id)
                        if feed is not None:
                            self._step(tasks, instance_id, feed.receive(update), apply)
            finally:
                # Closed before the stream, so that no message arrives at a closed one.
                with anyio.CancelScope(shield=True):
                    await client.close()

    def _receiver(
        self, send: MemoryObjectSendStream[tuple[str, WorkerUpdate]]
    ) -> Callable[[Msg], Awaitable[None]]:
        async def on_message(msg: Msg) -> None:
            instance_id = msg.subject.rpartition(".")[2]
            try:
                update = _decoder.decode(msg.data)
            except msgspec.DecodeError as exc:
                self.log.warning("ignored a malformed KV update on %s: %s", msg.subject, exc)
                return
            # When full, the update is dropped: the feed sees the hole as a gap in ids.
            with contextlib.suppress(anyio.WouldBlock):
                send.send_nowait((instance_id, update))

        return on_message

    async def _track_instances(
        self, tasks: anyio.abc.TaskGroup, apply: Apply, forget: Forget
    ) -> None:
        while True:
            live = {i.instance_id for i in self.workers.instances("kv_events")}
            for instance_id in live - self.feeds.keys():
                self.feeds[instance_id] = WorkerFeed()
                self._step(tasks, instance_id, FeedStep(needs_snapshot=True), apply)
            for instance_id in self.feeds.keys() - live:
                del self.feeds[instance_id]
                forget(instance_id)
            await self.workers.changed()

    async def _watch_reconnects(
        self, client: NatsClient, tasks: anyio.abc.TaskGroup, apply: Apply
    ) -> None:
        """After a reconnect, resynchronise every worker: what was published while the
        connection was down is lost, and a worker that then fell quiet would show no
        gap until its next event."""
        seen = client.stats["reconnects"]
        while True:
            await anyio.sleep(RECONNECT_CHECK_S)
            if client.stats["reconnects"] != seen:
                seen = client.stats["reconnects"]
                self.log.info("KV events: reconnected to NATS; fetching fresh snapshots")
                for instance_id, feed in self.feeds.items():
                    self._step(tasks, instance_id, feed.restart(), apply)

    def _step(
        self, tasks: anyio.abc.TaskGroup, instance_id: str, step: FeedStep, apply: Apply
    ) -> None:
        for update in step.apply:
            apply(instance_id, update)
        if step.needs_snapshot and instance_id not in self._snapshotting:
            self._snapshotting.add(instance_id)
            tasks.start_soon(self._resync, instance_id, apply)

    async def _resync(self, instance_id: str, apply: Apply) -> None:
        try:
            while (feed := self.feeds.get(instance_id)) is not None:
                try:
                    snapshot = await fetch_snapshot(self.workers, instance_id)
                except DynError as exc:
                    self.log.debug("kv snapshot from %s failed: %s", instance_id, exc)
                    await anyio.sleep(RESUBSCRIBE_DELAY_S)
                    continue
                if self.feeds.get(instance_id) is not feed:
                    return  # the worker left (or came back) meanwhile
                step = feed.resync(snapshot)
                for update in step.apply:
                    apply(instance_id, update)
                if not step.needs_snapshot:
                    return
        finally:
            self._snapshotting.discard(instance_id)
