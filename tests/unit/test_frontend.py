"""The HTTP frontend over a real socket: streaming, errors, health, metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx
import msgspec
import pytest
from _dyn_graph import free_port, port_is_listening

from dyn.contracts.base import Text
from dyn.discovery.memory import MemoryDiscovery
from dyn.graph import load_graph
from dyn.launch.base import LaunchObserver
from dyn.launch.inprocess import InProcessLauncher
from dyn.launch.role_classes import role_class
from dyn.roles.frontend import Frontend, _as_text
from dyn.roles.frontend_config import FrontendConfig
from dyn.runtime.runtime import Runtime, component_info
from dyn.transports.inproc import InprocTransport

pytestmark = pytest.mark.anyio


@pytest.fixture
async def hello() -> AsyncIterator[str]:
    port = free_port()
    graph = load_graph(
        "graphs/hello_world.yaml", [f"frontend.port={port}"], resolve_role=role_class
    )
    stop = anyio.Event()
    ready = anyio.Event()

    class Observer(LaunchObserver):
        def graph_ready(self, url: str | None, seconds: float) -> None:
            ready.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(InProcessLauncher().run, graph, Observer(), stop)
        with anyio.fail_after(10):
            await ready.wait()
        yield f"http://127.0.0.1:{port}"
        stop.set()
    assert not port_is_listening(port)


async def test_generate_streams_one_line_per_word(hello: str) -> None:
    async with httpx.AsyncClient(base_url=hello) as http:
        lines = []
        async with http.stream("POST", "/generate", content=b'{"text":"hello world"}') as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/plain")
            async for line in resp.aiter_lines():
                lines.append(line)
    assert lines == [
        "Frontend: Middle: Backend: hello",
        "Frontend: Middle: Backend: world-mid-back",
    ]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b'{"txt": "x"}', 400, "generate: Object missing required field `text`"),
        (b'{"text": "' + b"x" * (2 << 20) + b'"}', 413, "larger than"),
    ],
)
async def test_bad_bodies_get_json_errors(
    hello: str, body: bytes, status: int, message: str
) -> None:
    async with httpx.AsyncClient(base_url=hello) as http:
        resp = await http.post("/generate", content=body)
    assert resp.status_code == status
    error = resp.json()["error"]
    assert message in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


async def test_health_and_metrics(hello: str) -> None:
    async with httpx.AsyncClient(base_url=hello) as http:
        health = await http.get("/health")
        await http.post("/generate", json={"text": "a"})
        await http.post("/generate", content=b"{")
        metrics = (await http.get("/metrics")).text
    assert health.status_code == 200
    assert len(health.json()["instances"]["middle/generate"]) == 1
    assert 'dyn_frontend_requests_total{route="/generate",status="200"} 1.0' in metrics
    assert 'dyn_frontend_requests_total{route="/generate",status="400"} 1.0' in metrics
    assert "dyn_frontend_inflight_requests" in metrics
    assert "dyn_frontend_request_duration_seconds_bucket" in metrics


async def test_health_is_503_until_downstream_has_an_instance() -> None:
    port = free_port()
    async with Runtime(
        namespace="t", transport=InprocTransport(), discovery=MemoryDiscovery()
    ) as runtime:
        config = FrontendConfig(port=port, routes={"/generate": "middle/generate"})
        frontend = Frontend(
            config, component_info("t", "frontend"), {"middle": runtime.client("middle")}
        )
        frontend.runtime = runtime
        await frontend.start()
        runtime.tasks.start_soon(frontend.run)
        async with httpx.AsyncClient(base_url=frontend.url) as http:
            with anyio.fail_after(5):
                while not frontend.ready():  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            health = await http.get("/health")
            generate = await http.post("/generate", json={"text": "x"})
        await frontend.drain()
    assert health.status_code == 503
    assert health.json() == {"status": "unavailable", "instances": {"middle/generate": []}}
    assert generate.status_code == 503
    assert generate.headers["retry-after"] == "1"
    assert "no live instance of middle" in generate.json()["error"]["message"]


async def test_client_disconnect_cancels_the_backend() -> None:
    port = free_port()
    graph = load_graph(
        "graphs/hello_world.yaml",
        [f"frontend.port={port}", "backend.delay_s=0.05"],
        resolve_role=role_class,
    )
    stop = anyio.Event()
    launcher = InProcessLauncher()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(launcher.run, graph, LaunchObserver(), stop)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            with anyio.fail_after(10):
                while True:
                    try:
                        if (await http.get("/health")).status_code == 200:
                            break
                    except httpx.ConnectError:
                        await anyio.sleep(0.02)
            text = " ".join(f"w{i}" for i in range(200))
            async with http.stream("POST", "/generate", json={"text": text}) as resp:
                async for _line in resp.aiter_lines():
                    break
            # The frontend sees the disconnect, so its in-flight gauge drops back to 0.
            with anyio.fail_after(5):
                while True:
                    metrics = (await http.get("/metrics")).text
                    if 'dyn_frontend_inflight_requests{route="/generate"} 0.0' in metrics:
                        break
                    await anyio.sleep(0.05)
        stop.set()


@pytest.mark.parametrize(
    ("item", "line"),
    [
        (msgspec.to_builtins(Text("a line")), "a line"),  # a Text item, as untyped callers get it
        ("as it is", "as it is"),
        ({"text": "x"}, '{"text": "x"}'),  # a user's own dict stays JSON
        ({"type": "text", "text": "x", "more": 1}, '{"type": "text", "text": "x", "more": 1}'),
        ([1, 2], "[1, 2]"),
    ],
)
def test_plain_routes_write_text_items_as_text_and_the_rest_as_json(
    item: object, line: str
) -> None:
    assert _as_text(item) == line
