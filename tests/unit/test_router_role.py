"""The standalone router role names the worker that holds a prompt's prefix."""

from __future__ import annotations

import anyio
import pytest

from dyn.graph import load_graph_text
from dyn.launch.base import LaunchObserver
from dyn.launch.inprocess import InProcessLauncher
from dyn.launch.role_classes import role_class
from dyn.routing.base import RouteRequest

pytestmark = pytest.mark.anyio

GRAPH = """
name: routed
components:
  router:
    uses: router
    depends_on: [worker]
    config: {strategy: kv}
  worker:
    uses: worker
    replicas: 2
    config:
      block_size: 16
      num_gpu_blocks: 256
      timing: {fixed: {prefill_ms: 0, decode_ms: 0}}
"""


async def test_best_worker_is_the_one_holding_the_prefix() -> None:
    graph = load_graph_text(GRAPH, resolve_role=role_class)
    launcher, stop, ready = InProcessLauncher(), anyio.Event(), anyio.Event()

    class Observer(LaunchObserver):
        def graph_ready(self, url: str | None, seconds: float) -> None:
            ready.set()

    tokens = list(range(1000, 1064))  # four full blocks
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(launcher.run, graph, Observer(), stop)
        with anyio.fail_after(20):
            await ready.wait()
            runtime = launcher.runtime
            assert runtime is not None
            workers, router = runtime.client("worker"), runtime.client("router")
            await workers.wait_for_instances(count=2)
            await router.wait_for_instances("best_worker")
            target = workers.instances()[1].instance_id
            request = {"request_id": "warm", "tokens": tokens, "max_tokens": 2}
            route = RouteRequest("warm", instance_id=target)
            async with workers.stream("generate", request, route=route) as outputs:
                [item async for item in outputs]
            answer: dict[str, object] = {}
            while answer.get("worker_id") != target:  # the KV events reach it shortly
                await anyio.sleep(0.05)
                async with router.stream("best_worker", {"tokens": tokens}) as items:
                    answer = await anext(items)
        stop.set()
    assert answer["overlap_blocks"] == 4
    assert answer["estimated_prefix_hit_rate"] == 1.0
