"""Two processor replicas, in process, share their kv routers' in-flight load."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from dyn.graph import load_graph_text
from dyn.launch.base import LaunchObserver
from dyn.launch.inprocess import InProcessLauncher
from dyn.roles.processor import Processor
from dyn.routing.base import RouteRequest
from dyn.routing.kv.router import KvRouter

pytestmark = pytest.mark.anyio

GRAPH = """
name: synced
transport: {TRANSPORT}
components:
  processor:
    uses: processor
    replicas: 2
    depends_on: [worker]
    config: {strategy: kv}
  worker:
    uses: worker
    replicas: 2
    config:
      block_size: 16
      num_gpu_blocks: 256
      timing: {fixed: {prefill_ms: 20, decode_ms: 40}}
"""


def tracked(processor: Processor) -> int:
    """Requests in flight on any worker, as ``processor``'s router counts them."""
    router = processor.worker.router
    assert isinstance(router, KvRouter)
    return sum(int(row["requests"]) for row in router.describe().values())


def peers(processor: Processor) -> Any:
    assert processor.replicas is not None
    return processor.replicas.describe()["peers"]


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (state of another replica, which has no event to wait on)."""
    for _ in range(1000):
        if condition():
            return
        await anyio.sleep(0.01)
    raise AssertionError("the replicas never got there")


@pytest.mark.parametrize("transport", ["inproc", "tcp"])
async def test_a_replica_counts_what_its_peer_sends_and_forgets_it_when_it_leaves(
    transport: str,
) -> None:
    graph = load_graph_text(GRAPH.replace("{TRANSPORT}", transport))
    launcher, stop, ready = InProcessLauncher(), anyio.Event(), anyio.Event()

    class Observer(LaunchObserver):
        def graph_ready(self, url: str | None, seconds: float) -> None:
            ready.set()

    async def generate(target: str, request_id: str) -> list[Any]:
        assert launcher.runtime is not None
        request = {"request_id": request_id, "prompt": "hello " * 60, "max_tokens": 12}
        route = RouteRequest(request_id, instance_id=target)
        async with client.stream("generate", request, route=route) as items:
            return [item async for item in items]

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(launcher.run, graph, Observer(), stop)
        with anyio.fail_after(20):
            await ready.wait()
            assert launcher.runtime is not None
            p0, p1 = (c for s, c in launcher.components if isinstance(c, Processor))
            client = launcher.runtime.client("processor")
            await client.wait_for_instances("router_sync", count=2)
            await until(lambda: p0.info.instance_id in peers(p1))  # p0's first snapshot

            # A request through p0: p1 counts it while it runs and drops it when it ends.
            async with anyio.create_task_group() as inner:
                inner.start_soon(generate, p0.info.instance_id, "first")
                await until(lambda: tracked(p1) == 1)
                assert peers(p1) == {p0.info.instance_id: 1}
                assert tracked(p0) == 1
            await until(lambda: tracked(p1) == 0)

            # One more, and p0 leaves discovery while it runs: p1 forgets it at once.
            async with anyio.create_task_group() as inner:
                inner.start_soon(generate, p0.info.instance_id, "second")
                await until(lambda: tracked(p1) == 1)
                await launcher.runtime.withdraw_component(p0)
                await until(lambda: tracked(p1) == 0)
                assert peers(p1) == {}
                assert tracked(p0) == 1
        stop.set()
