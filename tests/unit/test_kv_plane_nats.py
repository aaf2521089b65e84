"""The KV event plane over a real nats-server: routers that subscribe late get a
snapshot and then every newer event in order; a gap in event ids brings a fresh
snapshot; a worker's publisher sends no snapshot contents."""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import msgspec
import pytest
from _dyn_graph import free_port
from _nats_server import NATS_SERVER, running_nats

from dyn.context import Context
from dyn.contracts.base import Empty
from dyn.discovery.memory import MemoryDiscovery
from dyn.kv.events import KvCleared, KvEvent, KvStored, StoredBlock, WorkerLoad, WorkerUpdate
from dyn.launch.nats_server import write_config
from dyn.roles.kv_plane_nats import NatsKvPlane, kv_subject, publish_updates
from dyn.routing.simple import RoundRobin
from dyn.runtime.client import Client
from dyn.runtime.component import Component, EmptyConfig, endpoint
from dyn.runtime.runtime import Runtime, component_info
from dyn.settings import TransportSecurity
from dyn.transports.nats import NatsTransport

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

LOAD = WorkerLoad(active_blocks=0, total_blocks=64, waiting=0, running=0, prefix_hit_rate=0.0)
LOG = logging.getLogger("test.kv_plane")


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_nats(tmp_path_factory.mktemp("nats")) as url:
        yield url


class ScriptedWorker(Component[EmptyConfig]):
    """A worker whose cache is a list of block hashes; the test decides which of its
    events reach the broker."""

    blocks: list[int]
    last_id: int
    snapshots_served: int

    async def start(self) -> None:
        self.blocks, self.last_id, self.snapshots_served = [], 0, 0

    def store(self, block: int) -> KvEvent:
        self.last_id += 1
        self.blocks.append(block)
        stored = KvStored(blocks=[StoredBlock(block_hash=block, tokens_hash=block)])
        return KvEvent(event_id=self.last_id, data=stored)

    @endpoint
    async def kv_events(self, request: Empty, ctx: Context) -> AsyncIterator[WorkerUpdate]:
        self.snapshots_served += 1
        events = [KvEvent(event_id=self.last_id, data=KvCleared())]
        stored = [StoredBlock(block_hash=b, tokens_hash=b) for b in self.blocks]
        events.append(KvEvent(event_id=self.last_id, data=KvStored(blocks=stored)))
        yield WorkerUpdate(events=events, load=LOAD, snapshot=True)
        await anyio.sleep_forever()  # a subscription stays open: the plane must close it


class RouterView:
    """What one router applied: the block hashes it believes the worker holds."""

    def __init__(self) -> None:
        self.blocks: list[int] = []
        self.applied_ids: list[int] = []  # ids of live (non-snapshot) events, in order

    def apply(self, instance_id: str, update: WorkerUpdate) -> None:
        for event in update.events:
            if isinstance(event.data, KvCleared):
                self.blocks = []
            elif isinstance(event.data, KvStored):
                self.blocks += [b.block_hash for b in event.data.blocks]
            if not update.snapshot:
                self.applied_ids.append(event.event_id)

    def forget(self, instance_id: str) -> None:
        self.blocks = []


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):  # 10 s
        if condition():
            return
        await anyio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_late_router_gets_a_snapshot_then_newer_events_and_a_gap_resnapshots(
    nats_url: str,
) -> None:
    encoder = msgspec.msgpack.Encoder()
    transport = NatsTransport(servers=[nats_url])
    async with Runtime(namespace="t", transport=transport, discovery=MemoryDiscovery()) as rt:
        worker = ScriptedWorker(EmptyConfig(), component_info("t", "worker"), {})
        worker.runtime = rt
        await worker.start()
        await rt.serve_component(worker)
        subject = kv_subject("t", "worker", worker.info.instance_id)
        broker = await transport.connect_client("test-worker")

        async def publish(*events: KvEvent) -> None:
            await broker.publish(subject, encoder.encode(WorkerUpdate(events=list(events))))

        # History no router saw: it reaches the routers through their snapshot only.
        for block in (1, 2, 3):
            await publish(worker.store(block))
        routers = [RouterView(), RouterView()]
        async with anyio.create_task_group() as tasks:
            for view in routers:
                client = Client(rt, "worker", RoundRobin(seed=0))
                rt.tasks.start_soon(client.watch)
                plane = NatsKvPlane(rt, client, LOG)
                tasks.start_soon(plane.follow, view.apply, view.forget)
            await _until(lambda: all(v.blocks == [1, 2, 3] for v in routers), "snapshot")
            assert worker.snapshots_served == 2  # one per router
            await publish(worker.store(4))
            await publish(worker.store(5), worker.store(6))
            await _until(lambda: all(v.blocks == [1, 2, 3, 4, 5, 6] for v in routers), "live")
            assert [v.applied_ids for v in routers] == [[4, 5, 6], [4, 5, 6]]
            assert worker.snapshots_served == 2
            # Event 7 is lost on the way: event 8 shows the gap, and each router asks
            # for a fresh snapshot, which holds 7.
            worker.store(7)
            await publish(worker.store(8))
            await _until(lambda: all(v.blocks == [1, 2, 3, 4, 5, 6, 7, 8] for v in routers), "gap")
            assert worker.snapshots_served == 4
            await publish(worker.store(9))
            await _until(lambda: all(v.blocks[-1] == 9 for v in routers), "after the gap")
            assert [v.applied_ids[-1] for v in routers] == [9, 9]
            assert routers[0].blocks == routers[1].blocks == worker.blocks
            tasks.cancel_scope.cancel()
        await broker.close()
        await transport.aclose()


async def test_a_publisher_sends_the_load_for_its_first_snapshot_and_a_marker_later(
    nats_url: str,
) -> None:
    transport = NatsTransport(servers=[nats_url])
    info = component_info("t", "pub")
    stored = KvEvent(event_id=1, data=KvStored(blocks=[StoredBlock(1, 1)]))
    snapshot = WorkerUpdate(
        events=[KvEvent(event_id=0, data=KvCleared())], load=LOAD, snapshot=True
    )
    script = [snapshot, WorkerUpdate(events=[stored]), snapshot]

    async def updates() -> AsyncIterator[WorkerUpdate]:
        for update in script:
            yield update
        await anyio.sleep_forever()

    async with Runtime(namespace="t", transport=transport, discovery=MemoryDiscovery()) as rt:
        listener = await transport.connect_client("test-listener")
        sub = await listener.subscribe(kv_subject("t", "pub", info.instance_id))
        await listener.flush()
        decoder = msgspec.msgpack.Decoder(WorkerUpdate)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(publish_updates, rt, info, updates)
            got: list[WorkerUpdate] = []
            with anyio.fail_after(10):
                for _ in script:
                    got.append(decoder.decode((await sub.next_msg(timeout=10)).data))
            tasks.cancel_scope.cancel()
        assert got == [
            WorkerUpdate(load=LOAD),  # the first snapshot's contents stay with the worker
            WorkerUpdate(events=[stored]),
            WorkerUpdate(load=LOAD, snapshot=True),  # a restarted history: fetch a snapshot
        ]
        await listener.close()
        await transport.aclose()


def _start_nats(folder: Path, port: int) -> subprocess.Popen[bytes]:
    """A nats-server on ``port``, listening when this returns (to restart one where its
    clients expect it)."""
    assert NATS_SERVER is not None
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "nats.conf"
    write_config(config, "127.0.0.1", port, folder / "data", TransportSecurity())
    with (folder / "nats.log").open("ab") as log:
        proc = subprocess.Popen([NATS_SERVER, "-c", str(config)], stdout=log, stderr=log)
    for _ in range(200):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError((folder / "nats.log").read_text()[-2000:])


async def test_a_router_resyncs_after_the_server_restarts(tmp_path: Path) -> None:
    """What a worker did while the server was away reaches the router by a snapshot,
    though no later event shows a gap."""
    port = free_port()
    server = _start_nats(tmp_path / "nats", port)
    try:
        transport = NatsTransport(servers=[f"nats://127.0.0.1:{port}"])
        view = RouterView()
        async with Runtime(namespace="t", transport=transport, discovery=MemoryDiscovery()) as rt:
            worker = ScriptedWorker(EmptyConfig(), component_info("t", "worker"), {})
            await worker.start()
            await rt.serve_component(worker)
            worker.store(1)
            client = Client(rt, "worker", RoundRobin(seed=0))
            rt.tasks.start_soon(client.watch)
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(NatsKvPlane(rt, client, LOG).follow, view.apply, view.forget)
                await _until(lambda: view.blocks == [1], "the first snapshot")
                server.kill()
                server.wait(10)
                worker.store(2)  # published to nobody: the server is away
                server = _start_nats(tmp_path / "nats", port)
                await _until(lambda: view.blocks == [1, 2], "a snapshot after the reconnect")
                assert worker.snapshots_served == 2
                tasks.cancel_scope.cancel()
            await transport.aclose()
    finally:
        server.kill()
        server.wait(10)
