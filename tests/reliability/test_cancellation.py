"""50 clients go away after 5 chunks each: the workers' in-flight gauge is back to 0 within
1 s, and the KV blocks they held are released, over every transport."""

from __future__ import annotations

import time

import anyio
import httpx
import pytest
from _graph_up import KV_GRAPH, completion_body, free_port, prompts
from _inprocess import metric, serve_graph

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
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, limits=limits
        ) as http:

            async def leave_after_chunks(text: str) -> None:
                body = completion_body(text, 2000)
                async with http.stream("POST", "/v1/completions", json=body) as resp:
                    assert resp.status_code == 200
                    chunks = 0
                    async for line in resp.aiter_lines():
                        chunks += line.startswith("data: ")
                        if chunks == CHUNKS:
                            break

            async with anyio.create_task_group() as tasks:
                for text in prompts(CLIENTS, seed=11):
                    tasks.start_soon(leave_after_chunks, text)
            left = time.monotonic()
            with anyio.fail_after(10):
                while await metric(http, "dyn_worker_inflight_requests") > 0:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            freed = time.monotonic() - left
            with anyio.fail_after(10):
                while await metric(http, "dyn_worker_kv_active_blocks") > 0:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            blocks_freed = time.monotonic() - left
    print(
        f"\n{transport}: {CLIENTS} clients left after {CHUNKS} chunks; workers' in flight "
        f"0 after {freed * 1000:.0f} ms, KV blocks released after {blocks_freed * 1000:.0f} ms"
    )
    assert freed < FREED_WITHIN_S
    assert blocks_freed < FREED_WITHIN_S
