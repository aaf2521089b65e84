"""``GET /admin/status`` on an in-process graph: one row per role instance, with load."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from dyn.graph import load_graph
from dyn.launch.base import LaunchObserver
from dyn.launch.inprocess import InProcessLauncher

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(path: str, *overrides: str) -> AsyncIterator[str]:
    port = free_port()
    graph = load_graph(path, [f"frontend.port={port}", *overrides])
    stop, ready = anyio.Event(), anyio.Event()

    class Observer(LaunchObserver):
        def graph_ready(self, url: str | None, seconds: float) -> None:
            ready.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(InProcessLauncher().run, graph, Observer(), stop)
        with anyio.fail_after(20):
            await ready.wait()
        yield f"http://127.0.0.1:{port}"
        stop.set()


@pytest.fixture
async def kv() -> AsyncIterator[str]:
    async for url in serve("graphs/kv_routing.yaml", "worker.replicas=2"):
        yield url


@pytest.fixture
async def guarded() -> AsyncIterator[str]:
    async for url in serve("graphs/hello_world.yaml", "frontend.admin_token=s3cret"):
        yield url


async def test_status_lists_every_role_with_worker_load(kv: str) -> None:
    async with httpx.AsyncClient(base_url=kv, timeout=10) as http:
        body = {"model": "dyn-mock", "prompt": "a b c d", "max_tokens": 4}
        assert (await http.post("/v1/completions", json=body)).status_code == 200
        data = (await http.get("/admin/status")).json()
    rows = {row["role"]: row for row in data["instances"]}
    assert {"frontend", "processor", "worker[0]", "worker[1]"} <= set(rows)
    assert all(row["state"] == "healthy" for row in rows.values())
    assert all(row["uptime_s"] is not None and row["uptime_s"] >= 0 for row in rows.values())
    assert rows["frontend"]["in_flight"] == 0
    workers = [rows["worker[0]"], rows["worker[1]"]]
    assert all(isinstance(w["kv_usage"], float) for w in workers), workers


async def test_status_needs_the_admin_token(guarded: str) -> None:
    async with httpx.AsyncClient(base_url=guarded, timeout=10) as http:
        assert (await http.get("/admin/status")).status_code == 401
        headers = {"Authorization": "Bearer s3cret"}
        data = (await http.get("/admin/status", headers=headers)).json()
    assert [row["role"] for row in data["instances"]] == ["frontend", "backend", "middle"]
