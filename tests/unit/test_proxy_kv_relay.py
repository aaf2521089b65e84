"""A ZMQ publisher speaking vLLM's wire format drives the kv router through a proxy
worker's relay exactly as dyn's own events for the same blocks would."""

from __future__ import annotations

import random

import anyio
import pytest
from _dyn_graph import free_port
from _vllm_events import BS, Engine, batch, overlaps, prompts, stored

from dyn.engines.openai_proxy.config import KvEventsConfig
from dyn.engines.openai_proxy.kv_relay import KvEventRelay
from dyn.kv.events import KvCleared, WorkerLoad, WorkerUpdate
from dyn.kv.hashing import local_block_hashes
from dyn.routing.kv.router import KvRouter

zmq = pytest.importorskip("zmq")
zmq_asyncio = pytest.importorskip("zmq.asyncio")

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

TOPIC = b"kv@test"


def idle() -> WorkerLoad:
    return WorkerLoad(active_blocks=0, total_blocks=0, waiting=0, running=0, prefix_hit_rate=0)


class Publisher:
    """vLLM's ZmqEventPublisher, reduced to its wire format."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq_asyncio.Context()
        self.socket = self.context.socket(zmq.PUB)
        self.socket.bind(endpoint)
        self.seq = 0

    async def send(self, payload: bytes) -> None:
        await self.socket.send_multipart([TOPIC, self.seq.to_bytes(8, "big"), payload])
        self.seq += 1

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


async def test_vllm_publisher_drives_the_kv_router_like_dyn_events() -> None:
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    publisher = Publisher(f"tcp://127.0.0.1:{port}")
    relay = KvEventRelay(KvEventsConfig(endpoint=endpoint, topic=TOPIC.decode()), BS, idle)
    rng = random.Random(3)
    engine = Engine(array=False)
    for tokens in prompts(rng, 30):
        engine.store(tokens)
        if rng.random() < 0.3:
            engine.evict_leaf(rng)
    own, relayed = KvRouter(), KvRouter()
    for event in engine.dyn:
        own.on_kv_event("w0", event)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(relay.run)
            updates = relay.subscribe()
            first = await anext(updates)
            assert first.snapshot
            assert [type(e.data) for e in first.events] == [KvCleared]
            # PUB drops what it sends before the SUB has joined: ping until one arrives.
            while relay.translator.last_seq is None:
                await publisher.send(batch([]))
                await anyio.sleep(0.02)
            for payload in engine.vllm:
                await publisher.send(payload)
            applied = 0
            with anyio.fail_after(10):
                while applied < len(engine.dyn):
                    update: WorkerUpdate = await anext(updates)
                    for event in update.events:
                        relayed.on_kv_event("w0", event)
                    applied += len(update.events)
            assert applied == len(engine.dyn)
            # A second router subscribing now gets it all from the snapshot.
            late = KvRouter()
            second = relay.subscribe()
            snapshot = await anext(second)
            for event in snapshot.events:
                late.on_kv_event("w0", event)
            await second.aclose()  # type: ignore[attr-defined]
            await updates.aclose()  # type: ignore[attr-defined]
            tasks.cancel_scope.cancel()
    finally:
        publisher.close()
    for tokens in prompts(rng, 40):
        local = local_block_hashes(tokens, BS)
        expected = own.index.find_matches(local)
        assert relayed.index.find_matches(local) == expected
        assert late.index.find_matches(local) == expected
        assert overlaps(relayed, tokens) == overlaps(own, tokens)


async def test_other_topics_are_ignored_and_no_publisher_means_load_only() -> None:
    port = free_port()
    publisher = Publisher(f"tcp://127.0.0.1:{port}")
    config = KvEventsConfig(endpoint=f"tcp://127.0.0.1:{port}", topic="mine")
    relay = KvEventRelay(config, BS, idle)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(relay.run)
            for _ in range(10):
                await publisher.send(batch([stored([1], None, [1, 2, 3, 4], BS)]))
                await anyio.sleep(0.02)
            assert relay.translator.last_seq is None
            tasks.cancel_scope.cancel()
    finally:
        publisher.close()
    quiet = KvEventRelay(None, BS, idle)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(quiet.run)
        updates = quiet.subscribe()
        assert (await anext(updates)).snapshot
        with anyio.fail_after(5):
            update = await anext(updates)
        assert update.events == []
        assert update.load == idle()
        await updates.aclose()  # type: ignore[attr-defined]
        tasks.cancel_scope.cancel()
