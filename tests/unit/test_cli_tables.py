"""`dyn route` and `dyn status` fit an 80-column terminal; `--wide` shows every column.

The commands talk over real HTTP to a stand-in frontend whose admin routes answer what a
`dyn up graphs/kv_routing.yaml` (four workers, the auto layout) answered.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from _dyn_graph import serve_in_thread
from typer.testing import CliRunner

from dyn.cli.app import app

runner = CliRunner()

IDS = ["f4c543a11f1cf289", "e24379e1fa847d05", "93dae1f2f5c0a3b6", "b2b87aa84724f27c"]


def _worker_stats(replica: int) -> dict[str, Any]:
    return {
        "cached_blocks": 40 + replica,
        "active_blocks": 12,
        "total_blocks": 512,
        "waiting": 0,
        "running": 2,
        "prefix_hit_rate": 0.5,
        "prefill_tokens": 130,
        "requests": 2,
        "reported_active_blocks": 12,
        "reported_total_blocks": 512,
        "reported_waiting": 0,
        "reported_running": 2,
        "reported_prefix_hit_rate": 0.5,
    }


ROUTE = {
    "strategy": "kv",
    "workers": {instance_id: _worker_stats(i) for i, instance_id in enumerate(IDS)},
    "instances": [{"instance_id": instance_id, "replica": i} for i, instance_id in enumerate(IDS)],
}


def _row(role: str, replica: int, pid: int, address: str, **extra: Any) -> dict[str, Any]:
    return {
        "role": role,
        "component": role.split("[")[0],
        "replica": replica,
        "instance_id": f"id{replica}",
        "node": "local",
        "host": "127.0.0.1",
        "pid": pid,
        "address": address,
        "metrics_url": None,
        "state": "healthy",
        "ejected_s": None,
        "reason": None,
        "uptime_s": 95.0,
        "in_flight": 0,
        "kv_usage": 0.02,
        **extra,
    }


STATUS = {
    "namespace": "dyn",
    "instances": [
        _row("frontend", 0, 10780, "http://127.0.0.1:8000", kv_usage=None),
        _row("processor", 0, 10780, "tcp://127.0.0.1:39359", kv_usage=None, in_flight=None),
        *[_row(f"worker[{i}]", i, 10768 + i % 2, f"tcp://127.0.0.1:3527{i}") for i in range(3)],
        _row("worker[3]", 3, 10769, "tcp://127.0.0.1:35403", state="ejected", ejected_s=3.24),
    ],
}


@pytest.fixture(scope="module")
def frontend() -> Iterator[str]:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def route(request: Request) -> JSONResponse:
        return JSONResponse(ROUTE)

    async def status(request: Request) -> JSONResponse:
        return JSONResponse(STATUS)

    routes = [Route("/admin/route", route), Route("/admin/status", status)]
    with serve_in_thread(Starlette(routes=routes)) as url:
        yield url


def _show(command: str, url: str, *flags: str) -> str:
    """The command's output at 80 columns."""
    result = runner.invoke(app, [command, "--url", url, *flags], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


def _headers(output: str) -> set[str]:
    """The headers of the table's columns (two spaces or more apart, no rules)."""
    lines = output.splitlines()
    header = next(line for line in lines if line.split()[:1] in (["worker"], ["role"]))
    return {cell.strip() for cell in header.split("  ") if cell.strip()}


def test_route_fits_80_columns_with_the_load_and_cache_columns(frontend: str) -> None:
    output = _show("route", frontend)
    assert max(len(line) for line in output.splitlines()) <= 80, output
    assert "…" not in output, output  # no cell or header cut short
    assert {"worker (replica)", "active", "cached", "running", "waiting", "hit rate"} <= (
        _headers(output)
    ), output
    for i, instance_id in enumerate(IDS):
        assert f"{instance_id[:8]} ({i})" in output
    assert "--wide" in output  # says how to see what was left out
    assert "waiting (rep.)" not in _headers(output)


def test_route_wide_shows_every_column(frontend: str) -> None:
    output = _show("route", frontend, "--wide")
    every = {"worker (replica)", "active", "total", "cached", "waiting", "running", "hit rate"}
    every |= {"prefill tok", "requests", "active (rep.)", "hit rate (rep.)", "running (rep.)"}
    every |= {"total (rep.)", "waiting (rep.)"}
    assert _headers(output) == every, output
    assert "…" not in output, output
    assert "not shown" not in output, output


def test_status_fits_80_columns_with_the_essential_columns(frontend: str) -> None:
    output = _show("status", frontend)
    assert max(len(line) for line in output.splitlines()) <= 80, output
    assert "…" not in output, output
    assert {"role", "node", "pid", "address", "state"} <= _headers(output), output
    assert "tcp://127.0.0.1:35403" in output
    assert "http://127.0.0.1:8000" in output
    line = next(line for line in output.splitlines() if line.startswith("worker[3]"))
    assert "ejected for 3.2 s" in line, output
    assert "--wide" in output


def test_status_wide_shows_every_column(frontend: str) -> None:
    from dyn.cli.status import COLUMNS

    output = _show("status", frontend, "--wide")
    assert _headers(output) == set(COLUMNS), output
    assert "…" not in output, output
    assert "not shown" not in output, output
    line = next(line for line in output.splitlines() if line.startswith("worker[0]"))
    assert "1m35s" in line, output
    assert "2%" in line, output
