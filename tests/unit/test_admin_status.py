"""``GET /admin/status`` on an in-process graph: one row per role instance, with load."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from _dyn_graph import free_port
from rich.console import Console
from typer.testing import CliRunner

from dyn.cli import status as status_cmd
from dyn.cli.app import app
from dyn.engines.base import EngineOutput, EngineRequest
from dyn.errors import TransportError
from dyn.graph import load_graph
from dyn.launch.base import LaunchObserver
from dyn.launch.inprocess import InProcessLauncher

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def serve(path: str, *overrides: str) -> AsyncIterator[str]:
    async for url, _launcher in serve_with(path, *overrides):
        yield url


async def serve_with(path: str, *overrides: str) -> AsyncIterator[tuple[str, InProcessLauncher]]:
    port = free_port()
    graph = load_graph(path, [f"frontend.port={port}", *overrides])
    stop, ready = anyio.Event(), anyio.Event()

    class Observer(LaunchObserver):
        def graph_ready(self, url: str | None, seconds: float) -> None:
            ready.set()

    launcher = InProcessLauncher()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(launcher.run, graph, Observer(), stop)
        with anyio.fail_after(20):
            await ready.wait()
        yield f"http://127.0.0.1:{port}", launcher
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


@pytest.fixture
async def kv_launcher() -> AsyncIterator[tuple[str, InProcessLauncher]]:
    overrides = ("worker.replicas=2", "processor.strategy=round_robin")
    async for served in serve_with("graphs/kv_routing.yaml", *overrides):
        yield served


async def _unreachable(request: EngineRequest) -> AsyncIterator[EngineOutput]:
    raise TransportError("worker[1] is unreachable (on purpose)")
    yield  # an async generator, as the engine's generate is


async def test_status_shows_a_worker_the_processor_ejected(
    kv_launcher: tuple[str, InProcessLauncher],
) -> None:
    url, launcher = kv_launcher
    broken = next(
        c for spec, c in launcher.components if spec.name == "worker" and c.info.replica == 1
    )
    broken.engine.generate = _unreachable  # type: ignore[attr-defined]
    body = {"model": "dyn-mock", "prompt": "a b c d", "max_tokens": 4}
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        # Each call to the broken worker fails as unreachable and the processor sends the
        # request to the other one; three failures in a row eject it (EjectionPolicy).
        for _ in range(8):
            assert (await http.post("/v1/completions", json=body)).status_code == 200
        data = (await http.get("/admin/status")).json()
    rows = {row["role"]: row for row in data["instances"]}
    assert rows["worker[1]"]["instance_id"] == broken.info.instance_id
    assert rows["worker[1]"]["state"] == "ejected"
    assert 0 < rows["worker[1]"]["ejected_s"] <= 5.0
    others = [row for role, row in rows.items() if role != "worker[1]"]
    assert all(r["state"] == "healthy" and r["ejected_s"] is None for r in others), others

    console = Console(width=200, record=True)
    console.print(status_cmd.render(data))
    table = console.export_text()
    line = next(line for line in table.splitlines() if "worker[1]" in line)
    assert "ejected for" in line, table
    assert " s" in line, table

    # `dyn status --json` through the CLI (sync HTTP, so off the event loop's thread).
    def cli() -> Any:
        return CliRunner().invoke(app, ["status", "--url", url, "--json"])

    result = await anyio.to_thread.run_sync(cli)
    assert result.exit_code == 0, result.output
    rows = {row["role"]: row for row in json.loads(result.output)["instances"]}
    assert rows["worker[1]"]["state"] == "ejected"
    assert rows["worker[0]"]["state"] == "healthy"


def _worker(launcher: InProcessLauncher, replica: int) -> Any:
    return next(
        c for spec, c in launcher.components if spec.name == "worker" and c.info.replica == replica
    )


async def test_status_asks_each_instance_how_it_is(
    kv_launcher: tuple[str, InProcessLauncher], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dyn.runtime.runtime import health_path

    url, launcher = kv_launcher
    not_ready, wedged = _worker(launcher, 0), _worker(launcher, 1)
    monkeypatch.setattr(not_ready, "ready", lambda: False)

    async def never_answers(request: Any, ctx: Any) -> AsyncIterator[dict[str, Any]]:
        await anyio.sleep_forever()
        yield {}

    # The runtime's route table stands in for a worker whose event loop is stuck.
    assert launcher.runtime is not None
    info = wedged.info
    launcher.runtime._routes[health_path(info.namespace, info.component, info.instance_id)] = (
        never_answers
    )
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        began = anyio.current_time()
        data = (await http.get("/admin/status")).json()
        took = anyio.current_time() - began
    rows = {row["role"]: row for row in data["instances"]}
    assert (rows["worker[0]"]["state"], rows["worker[0]"]["reason"]) == ("unhealthy", "not ready")
    assert rows["worker[1]"]["state"] == "unhealthy"
    assert "no answer within 1 s" in rows["worker[1]"]["reason"]
    assert rows["processor"]["state"] == "healthy"
    assert rows["processor"]["reason"] is None
    assert took < 5  # one probe's timeout, not one per instance
    table = Console(width=200, record=True)
    table.print(status_cmd.render(data))
    assert "unhealthy: not ready" in table.export_text()
