"""A proxy worker's ``kv_events`` stream: vLLM's events from ZMQ, relayed as dyn's.

One SUB socket per worker follows the upstream's publisher for the worker's lifetime and
feeds a :class:`~dyn.kv.vllm.VllmKvTranslator`, whose mirror answers every router that
(re)subscribes with a snapshot, as dyn's own workers do. Without a publisher the stream
is an empty snapshot and then the load alone, which is all ``kv_approx`` and
``least_loaded`` need. pyzmq is optional (``dyn[zmq]``) and imported only here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from dyn.engines.openai_proxy.config import KvEventsConfig
from dyn.errors import PluginError
from dyn.kv.events import KvEvent, WorkerLoad, WorkerUpdate
from dyn.kv.vllm import VllmEventError, VllmKvTranslator

__all__ = ["LOAD_INTERVAL_S", "MAX_PENDING_EVENTS", "KvEventRelay", "import_zmq"]

_log = logging.getLogger("dyn.engines.openai_proxy")

# How often subscribers get the load when no event comes: `dyn route` stays current.
LOAD_INTERVAL_S = 1.0
# A subscriber this many events behind gets a fresh snapshot instead (bounded memory).
MAX_PENDING_EVENTS = 4096


def import_zmq() -> Any:
    """``zmq.asyncio``, or a clear error naming the extra to install."""
    try:
        import zmq.asyncio
    except ImportError as exc:
        raise PluginError(
            "kv_events needs pyzmq: install dyn[zmq] (pip install 'dyn[zmq]'), or remove "
            "kv_events from the proxy worker's config to route with kv_approx"
        ) from exc
    return zmq.asyncio


class _Subscriber:
    def __init__(self, snapshot: list[KvEvent]) -> None:
        self.snapshot: list[KvEvent] | None = snapshot
        self.events: list[KvEvent] = []
        self.load: WorkerLoad | None = None
        self.wake = anyio.Event()

    def push(self, events: list[KvEvent], load: WorkerLoad | None) -> None:
        self.events.extend(events)
        if len(self.events) > MAX_PENDING_EVENTS:
            self.events.clear()
            self.snapshot = None  # the reader builds a fresh one when it wakes
        if load is not None:
            self.load = load
        self.wake.set()


class KvEventRelay:
    """Run :meth:`run` for the worker's lifetime; every :meth:`subscribe` is one router."""

    def __init__(
        self, config: KvEventsConfig | None, block_size: int, load: Callable[[], WorkerLoad]
    ) -> None:
        self.config = config
        self.translator = VllmKvTranslator(block_size)
        self._load = load
        self._subscribers: set[_Subscriber] = set()
        self._warned: set[str] = set()
        if config is not None:
            import_zmq()  # fail at start-up, not on the first event

    async def run(self) -> None:
        if self.config is None:
            while True:
                await anyio.sleep(LOAD_INTERVAL_S)
                self._publish([])
        await self._follow(self.config)

    async def _follow(self, config: KvEventsConfig) -> None:
        zmq_asyncio = import_zmq()
        import zmq

        context = zmq_asyncio.Context()
        socket = context.socket(zmq.SUB)
        try:
            socket.setsockopt(zmq.SUBSCRIBE, config.topic.encode())
            socket.connect(config.endpoint)
            _log.info("following vLLM KV events at %s", config.endpoint)
            while True:
                parts: list[bytes] | None = None
                with anyio.move_on_after(LOAD_INTERVAL_S):
                    parts = await socket.recv_multipart()
                self._publish(self._translate(parts) if parts is not None else [])
        finally:
            socket.close(linger=0)
            context.term()

    def _translate(self, parts: list[bytes]) -> list[KvEvent]:
        # vLLM sends (topic, sequence number as 8 bytes big-endian, payload).
        if len(parts) != 3 or len(parts[1]) != 8:
            self._warn(f"ignoring a ZMQ message of {len(parts)} parts; vLLM sends 3")
            return []
        seq = int.from_bytes(parts[1], "big", signed=True)
        try:
            return self.translator.feed(parts[2], seq)
        except VllmEventError as exc:
            # The batch is lost, so the index may be wrong: start it over.
            self._warn(f"dropping a KV event batch from {self.endpoint}: {exc}")
            return self.translator.reset()

    @property
    def endpoint(self) -> str:
        return self.config.endpoint if self.config else ""

    def _warn(self, message: str) -> None:
        if message not in self._warned:  # once each, not once per engine step
            self._warned.add(message)
            _log.warning("%s", message)

    def _publish(self, events: list[KvEvent]) -> None:
        if not self._subscribers:
            return
        load = self._load()
        for subscriber in self._subscribers:
            subscriber.push(events, load)

    async def subscribe(self) -> AsyncIterator[WorkerUpdate]:
        """A snapshot first (an empty one without a publisher), then events and load."""
        subscriber = _Subscriber(self.translator.snapshot())
        self._subscribers.add(subscriber)
        try:
            while True:
                if subscriber.snapshot is None:
                    subscriber.snapshot = self.translator.snapshot()
                if subscriber.snapshot:
                    snapshot, subscriber.snapshot = subscriber.snapshot, []
                    subscriber.events.clear()
                    subscriber.load = None
                    yield WorkerUpdate(events=snapshot, load=self._load(), snapshot=True)
                elif subscriber.events or subscriber.load is not None:
                    events, subscriber.events = subscriber.events, []
                    load, subscriber.load = subscriber.load, None
                    yield WorkerUpdate(events=events, load=load)
                else:
                    subscriber.wake = anyio.Event()
                    await subscriber.wake.wait()
        finally:
            self._subscribers.discard(subscriber)
