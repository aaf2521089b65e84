"""graphs/kv_routing.yaml as shipped, served in the test's own process on a loopback
port, with one worker that takes no time per step: for tests of the HTTP surface that
need the whole graph (frontend, processor, a simulated worker) behind a real server,
with the ways those tests speak to it: the official ``openai`` client and error bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
from _dyn_graph import free_port
from openai import AsyncOpenAI

from dyn.graph import GraphSpec, load_graph
from dyn.launch.base import LaunchObserver
from dyn.launch.inprocess import InProcessLauncher
from dyn.launch.role_classes import role_class

__all__ = ["KV_GRAPH", "error_of", "sdk", "serve_graph", "serve_kv_graph"]

KV_GRAPH = Path(__file__).resolve().parents[2] / "graphs" / "kv_routing.yaml"


@asynccontextmanager
async def serve_kv_graph() -> AsyncIterator[str]:
    """The graph's frontend URL while it serves; stopped on leaving."""
    overrides = ["worker.replicas=1", "worker.timing={fixed: {prefill_ms: 0, decode_ms: 0}}"]
    async with serve_graph(
        lambda port: load_graph(KV_GRAPH, [port, *overrides], resolve_role=role_class)
    ) as url:
        yield url


@asynccontextmanager
async def serve_graph(load: Callable[[str], GraphSpec]) -> AsyncIterator[str]:
    """A graph run in this process as `dyn up` runs it in one process, its frontend on a
    free loopback port: ``load`` makes it given that port's override
    (``frontend.port=N``). The frontend's URL while it serves; stopped on leaving."""
    port = free_port()
    graph = load(f"frontend.port={port}")
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


def sdk(url: str) -> AsyncOpenAI:
    """The official client for ``url``'s OpenAI API: no retries, so a failure shows."""
    return AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=20)


def error_of(resp: httpx.Response) -> dict[str, Any]:
    """The ``error`` object of an OpenAI-shaped error response, checked for its shape."""
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])
