"""How routers learn each worker's KV events and load: the KV event plane.

Two planes, chosen by the graph's transport:

- :class:`StreamKvPlane` (tcp, grpc, inproc): the router calls every worker's
  ``kv_events`` endpoint and follows the stream, a snapshot first; a broken stream is
  resubscribed, which brings a fresh snapshot.
- :class:`~dyn.roles.kv_plane_nats.NatsKvPlane` (nats): workers publish their updates
  on a subject each, which every router replica subscribes to; a router that starts
  late or sees a gap in event ids calls ``kv_events`` once for a snapshot
  (:mod:`dyn.kv.feed`).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from typing import ClassVar

import anyio

from dyn.contracts.base import Empty
from dyn.contracts.engine import ENGINE_KV_EVENTS
from dyn.errors import DynError
from dyn.kv.events import WorkerUpdate
from dyn.routing.base import RouteRequest
from dyn.runtime.client import Client
from dyn.runtime.component import ComponentInfo
from dyn.runtime.runtime import Runtime

__all__ = [
    "Apply",
    "Forget",
    "KvEventPlane",
    "StreamKvPlane",
    "fetch_snapshot",
    "kv_plane_for",
    "publish_kv_events",
]

# How long to wait before resubscribing to a worker whose event stream broke.
RESUBSCRIBE_DELAY_S = 0.5

Apply = Callable[[str, WorkerUpdate], None]  # (worker instance id, update) -> None
Forget = Callable[[str], None]  # a worker instance left
Log = logging.Logger | logging.LoggerAdapter[logging.Logger]


class KvEventPlane(ABC):
    """Feeds a router every live worker's updates, each worker's snapshot first."""

    name: ClassVar[str]  # as `dyn route` and GET /admin/route show it

    @abstractmethod
    async def follow(self, apply: Apply, forget: Forget) -> None:
        """Until cancelled: call ``apply`` with every update of every live worker in
        order (a snapshot update replaces what came before), ``forget`` when one leaves.
        Cancelling and calling again starts over from fresh snapshots."""


def kv_plane_for(runtime: Runtime, workers: Client, log: Log) -> KvEventPlane:
    """The plane the runtime's transport calls for."""
    if runtime.transport.name == "nats":
        from dyn.roles.kv_plane_nats import NatsKvPlane

        return NatsKvPlane(runtime, workers, log)
    return StreamKvPlane(workers, log)


async def publish_kv_events(
    runtime: Runtime, info: ComponentInfo, updates: Callable[[], AsyncIterator[WorkerUpdate]]
) -> None:
    """A worker's side of the plane: on a broker transport, publish ``updates()`` for
    every router; on a point-to-point one there is nothing to do (routers call)."""
    if runtime.transport.name != "nats":
        return
    from dyn.roles.kv_plane_nats import publish_updates

    await publish_updates(runtime, info, updates)


async def fetch_snapshot(workers: Client, instance_id: str) -> WorkerUpdate:
    """One worker's snapshot: the first item of a ``kv_events`` subscription."""
    route = RouteRequest(request_id=f"kv-snapshot-{instance_id}", instance_id=instance_id)
    async with workers.stream(ENGINE_KV_EVENTS, Empty(), route=route) as updates:
        async for update in updates:
            return update
    raise DynError(f"worker {instance_id}'s kv_events stream ended before its snapshot")


class StreamKvPlane(KvEventPlane):
    """One ``kv_events`` stream per live worker instance (point-to-point transports)."""

    name: ClassVar[str] = "stream"

    def __init__(self, workers: Client, log: Log) -> None:
        self.workers = workers
        self.log = log

    async def follow(self, apply: Apply, forget: Forget) -> None:
        following: dict[str, anyio.CancelScope] = {}
        async with anyio.create_task_group() as tasks:
            while True:
                live = {i.instance_id for i in self.workers.instances("kv_events")}
                for instance_id in live - following.keys():
                    following[instance_id] = anyio.CancelScope()
                    tasks.start_soon(self._subscribe, instance_id, following[instance_id], apply)
                for instance_id in following.keys() - live:
                    following.pop(instance_id).cancel()
                    forget(instance_id)
                await self.workers.changed()

    async def _subscribe(self, instance_id: str, scope: anyio.CancelScope, apply: Apply) -> None:
        with scope:
            while True:
                route = RouteRequest(request_id=f"kv-events-{instance_id}", instance_id=instance_id)
                try:
                    async with self.workers.stream(
                        ENGINE_KV_EVENTS, Empty(), route=route
                    ) as updates:
                        async for update in updates:
                            apply(instance_id, update)
                except DynError as exc:
                    self.log.debug("kv events from %s broke: %s", instance_id, exc)
                await anyio.sleep(RESUBSCRIBE_DELAY_S)
