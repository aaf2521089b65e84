"""A request's deadline (``x-request-timeout`` or the frontend's ``request_timeout_s``):
past it the answer is 504, and the worker stops generating."""

from __future__ import annotations

import time

import anyio
import httpx
import pytest
from _dyn_graph import free_port
from _inprocess import metric, serve_graph
from _streams import KV_GRAPH, completion_body

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.mark.parametrize("transport", ["inproc", "tcp"])
async def test_timeout_header_gives_504_and_stops_the_worker(transport: str) -> None:
    port = free_port()
    # Slow prefill (fixed timing), so the deadline passes before the first token.
    timing = "worker.timing={fixed: {prefill_ms: 2000, decode_ms: 5}}"
    async with (
        serve_graph(str(KV_GRAPH), f"frontend.port={port}", timing, transport=transport),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
    ):
        t0 = time.monotonic()
        body = {**completion_body("slow", 50), "stream": False}
        resp = await http.post("/v1/completions", json=body, headers={"x-request-timeout": "0.3"})
        took = time.monotonic() - t0
        assert resp.status_code == 504, resp.text
        assert resp.json()["error"]["code"] == "deadline_exceeded"
        with anyio.fail_after(2):
            while await metric(http, "dyn_worker_inflight_requests") > 0:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        bad = await http.post("/v1/completions", json=body, headers={"x-request-timeout": "soon"})
        assert bad.status_code == 400
        assert "x-request-timeout" in bad.json()["error"]["message"]
    print(f"\n{transport}: 504 after {took * 1000:.0f} ms for a 300 ms deadline")
    assert took < 1.5


async def test_configured_timeout_ends_a_stream_in_band() -> None:
    port = free_port()
    async with (
        serve_graph(
            str(KV_GRAPH),
            f"frontend.port={port}",
            "frontend.request_timeout_s=0.5",
            "worker.timing={fixed: {prefill_ms: 0, decode_ms: 50}}",
        ),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
    ):
        resp = await http.post("/v1/completions", json=completion_body("long", 200))
        events = [e for e in resp.text.split("\n\n") if e]
        assert resp.status_code == 200
        assert events[-1] == "data: [DONE]"
        assert '"code":"deadline_exceeded"' in events[-2]
        assert len(events) < 50  # stopped well before 200 tokens
