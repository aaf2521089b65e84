"""50 clients go away after 5 chunks each: the workers' in-flight gauge is back to 0 within
1 s, the KV blocks they held are released and the router's load is back to 0, over every
transport; and clients that go away while their prefill runs on a prefill worker free
the decode worker, the prefill worker and the prefill queue as fast."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx
import pytest
from _dyn_graph import free_port
from _inprocess import metric, serve_graph
from _streams import KV_GRAPH, completion_body, prompts

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

CLIENTS = 50
CHUNKS = 5
FREED_WITHIN_S = 1.0


@pytest.mark.parametrize("transport", ["inproc", "tcp", "grpc"])
async def test_clients_leaving_mid_stream_free_the_workers(transport: str) -> None:
    port = free_port()
    async with serve_graph(
        str(KV_GRAPH),
        f"frontend.port={port}",
        "worker.replicas=2",
        transport=transport,
    ):
        # One connection more than the clients hold: for the router's view mid-stream.
        limits = httpx.Limits(max_connections=CLIENTS + 1)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, limits=limits
        ) as http:
            streaming = 0
            leave = anyio.Event()

            async def leave_after_chunks(text: str) -> None:
                nonlocal streaming
                body = completion_body(text, 2000)
                async with http.stream("POST", "/v1/completions", json=body) as resp:
                    assert resp.status_code == 200
                    chunks = 0
                    # Held, so that the stream stays open until the client leaves.
                    lines = resp.aiter_lines()
                    async for line in lines:
                        chunks += line.startswith("data: ")
                        if chunks == CHUNKS:
                            break
                    # Everyone leaves at once, once the router's view was taken.
                    streaming += 1
                    await leave.wait()

            async with anyio.create_task_group() as tasks:
                for text in prompts(CLIENTS, seed=11):
                    tasks.start_soon(leave_after_chunks, text)
                with anyio.fail_after(10):
                    while streaming < CLIENTS:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                routed = await _router_load(http, "requests")
                leave.set()
            left = time.monotonic()
            assert routed == CLIENTS, "the router did not count the streams in flight"
            with anyio.fail_after(10):
                while await metric(http, "dyn_worker_inflight_requests") > 0:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            freed = time.monotonic() - left
            with anyio.fail_after(10):
                while await metric(http, "dyn_worker_kv_active_blocks") > 0:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            blocks_freed = time.monotonic() - left
            with anyio.fail_after(10):
                while await _router_load(http, "requests", "active_blocks"):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            router_freed = time.monotonic() - left
    print(
        f"\n{transport}: {CLIENTS} clients left after {CHUNKS} chunks; workers' in flight "
        f"0 after {freed * 1000:.0f} ms, KV blocks released after {blocks_freed * 1000:.0f} ms, "
        f"the router's load back to 0 after {router_freed * 1000:.0f} ms"
    )
    assert freed < FREED_WITHIN_S
    assert blocks_freed < FREED_WITHIN_S
    assert router_freed < FREED_WITHIN_S


async def _router_load(http: httpx.AsyncClient, *fields: str) -> float:
    """``fields`` of the load the processor's router counts in flight (requests, active
    blocks), summed over the workers: ``GET /admin/route``, what `dyn route` shows."""
    reply = await http.get("/admin/route")
    assert reply.status_code == 200, reply.text
    workers: dict[str, dict[str, float]] = reply.json()["workers"]
    assert workers, "the router knows no worker"
    return sum(w[field] for w in workers.values() for field in fields)


DISAGG_GRAPH = KV_GRAPH.parent / "disagg.yaml"
# Two prefill workers taking four jobs each: every request's prefill runs at once.
REMOTE_CLIENTS = 8
# A prefill worker's prefill takes 3 s (30 s of the fixed model, sped up 10x): the
# clients leave well within it.
SLOW_PREFILL = "{fixed: {prefill_ms: 30000, decode_ms: 10}}"


@pytest.mark.parametrize("transport", ["inproc", "tcp", "grpc"])
async def test_clients_leaving_during_a_remote_prefill_free_every_role(transport: str) -> None:
    port = free_port()
    async with serve_graph(
        str(DISAGG_GRAPH),
        f"frontend.port={port}",
        "worker.speedup_ratio=10",
        "worker.max_local_prefill_length=0",  # every prefill remote...
        "worker.max_prefill_queue_size=64",  # ...however many are queued
        "prefill_worker.speedup_ratio=10",
        f"prefill_worker.timing={SLOW_PREFILL}",
        transport=transport,
    ) as launcher:
        roles: dict[str, list[Any]] = {}
        for spec, component in launcher.components:
            roles.setdefault(spec.name, []).append(component)
        decoders, prefillers = roles["worker"], roles["prefill_worker"]
        (queue,) = roles["prefill_queue"]
        (processor,) = roles["processor"]

        def held() -> dict[str, int]:
            """What is still held anywhere for a request, by where."""
            described = processor.worker.router.describe().values()
            return {
                "decode pending": sum(len(d._pending) for d in decoders),
                "decode in flight": sum(d._active for d in decoders),
                "decode blocks": sum(d.engine.load().active_blocks for d in decoders),
                "queue jobs": queue.backend.queue.depth,
                "prefill jobs": sum(p.jobs_in_progress for p in prefillers),
                "prefill blocks": sum(p.engine.load().active_blocks for p in prefillers),
                "router requests": sum(int(w["requests"]) for w in described),
                "router blocks": sum(int(w["active_blocks"]) for w in described),
            }

        limits = httpx.Limits(max_connections=REMOTE_CLIENTS)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, limits=limits
        ) as http:

            async def wait_for_first_token(text: str) -> None:
                body = completion_body(text, 64)
                async with http.stream("POST", "/v1/completions", json=body) as resp:
                    await resp.aread()
                raise AssertionError("a request completed: its prefill was not slow enough")

            async with anyio.create_task_group() as tasks:
                for text in prompts(REMOTE_CLIENTS, seed=12, words=200):
                    tasks.start_soon(wait_for_first_token, text)
                with anyio.fail_after(10):
                    while sum(p.jobs_in_progress for p in prefillers) < REMOTE_CLIENTS:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                during = held()
                tasks.cancel_scope.cancel()
            left = time.monotonic()
            with anyio.fail_after(10):
                while any(held().values()):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            freed = time.monotonic() - left
            remote = await metric(http, 'dyn_prefills_total{location="remote"}')
    print(
        f"\n{transport}: {REMOTE_CLIENTS} clients left while their prefills ran on prefill workers "
        f"(held then: {during}); everything released after {freed * 1000:.0f} ms"
    )
    for held_there in ("decode pending", "queue jobs", "prefill jobs", "router requests"):
        assert during[held_there] == REMOTE_CLIENTS, held_there
    assert remote == 0, "a prefill finished before its client left"
    assert freed < FREED_WITHIN_S
