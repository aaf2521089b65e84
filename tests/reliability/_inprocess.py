"""A graph served in this process (its roles share one registry), for tests that read the
workers' metrics from the frontend's /metrics."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx

from dyn.graph import load_graph
from dyn.launch.base import LaunchObserver
from dyn.launch.inprocess import InProcessLauncher
from dyn.launch.role_classes import role_class


@asynccontextmanager
async def serve_graph(
    graph_file: str, *overrides: str, transport: str | None = None
) -> AsyncIterator[InProcessLauncher]:
    """Serve ``graph_file`` with ``overrides`` until the block ends; yields the launcher.

    With ``transport`` (tcp, grpc) the roles still share this process, but every call
    crosses a loopback socket.
    """
    graph = load_graph(graph_file, list(overrides), resolve_role=role_class)
    if transport is not None:
        graph = dataclasses.replace(graph, transport=transport)
    stop = anyio.Event()
    ready = anyio.Event()

    class Observer(LaunchObserver):
        def graph_ready(self, url: str | None, seconds: float) -> None:
            ready.set()

    launcher = InProcessLauncher()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(launcher.run, graph, Observer(), stop)
        with anyio.fail_after(30):
            await ready.wait()
        try:
            yield launcher
        finally:
            stop.set()


async def metric(http: httpx.AsyncClient, name: str) -> float:
    """The sum of every sample of ``name`` on the frontend's /metrics page."""
    total = 0.0
    for line in (await http.get("/metrics")).text.splitlines():
        if line.startswith(name) and line[len(name)] in "{ ":
            total += float(line.rsplit(" ", 1)[1])
    return total
