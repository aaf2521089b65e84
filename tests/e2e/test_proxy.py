"""graphs/proxy.yaml in front of real upstream servers, every one a real process.

The main upstream is dyn itself (graphs/kv_routing.yaml with a 1024-token context and
2 ms decode steps), so the whole path is real: client → proxy frontend → processor →
proxy worker → HTTP → upstream frontend → processor → simulated worker. Other tests put
the proxy in front of an upstream that answers 500, and of one that is killed
mid-stream and then restarted.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from _dyn_graph import dyn_up, free_port, metrics_pages, serve_in_thread
from _prompts import WORDS as ALL_WORDS
from typer.testing import CliRunner

from dyn.cli.app import app

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_GRAPH = ROOT / "graphs" / "kv_routing.yaml"
PROXY_GRAPH = ROOT / "graphs" / "proxy.yaml"
MODEL = "dyn-proxy"
UPSTREAM_CONTEXT = 1024
WORDS = ALL_WORDS[:13]
ONE_PROCESS = ("--layout", "one-process")


def upstream_graph(tmp: Path, decode_ms: int) -> Path:
    doc = yaml.safe_load(UPSTREAM_GRAPH.read_text())
    doc["model"]["max_model_len"] = UPSTREAM_CONTEXT
    doc["components"]["worker"]["replicas"] = 2
    doc["components"]["worker"]["config"]["timing"] = {
        "fixed": {"prefill_ms": 0, "decode_ms": decode_ms}
    }
    path = tmp / f"upstream_{decode_ms}ms.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def proxy_sets(*upstreams: str) -> list[str]:
    return [f"worker.upstreams=[{', '.join(upstreams)}]", "worker.health_interval_s=0.3"]


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``, over every
    metrics page of the run (one per process in a multi-process layout)."""
    total = 0.0
    for line in "\n".join(metrics_pages(url)).splitlines():
        match = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("proxy_upstream")
    port = free_port()
    # The upstream is a neighbour: one process, so killing it kills every role at once.
    with dyn_up(upstream_graph(tmp, 2), port, tmp / "upstream.log", options=ONE_PROCESS):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def proxy(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("proxy")
    port = free_port()
    with dyn_up(PROXY_GRAPH, port, tmp / "proxy.log", *proxy_sets(upstream)):
        yield f"http://127.0.0.1:{port}"


def sse_events(response: httpx.Response) -> Iterator[str]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line[6:]


def test_completions_chat_streaming_and_usage(proxy: str, upstream: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{proxy}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == [MODEL]

    prompt = "Hello there, how is the weather"
    completion = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8)
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].text
    direct = httpx.post(
        f"{upstream}/v1/completions",
        json={"model": "dyn-mock", "prompt": prompt, "max_tokens": 8},
    ).json()
    # Same tokenizer on both sides: the prompt is counted alike.
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == direct["usage"]["prompt_tokens"]
    assert completion.usage.completion_tokens >= 1

    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi!"}], max_tokens=5
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content

    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens >= 1
    assert chunks[-2].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_upstream_cached_tokens_are_counted(proxy: str) -> None:
    prompt = " ".join(WORDS * 20)
    before = metric(proxy, "dyn_cached_prompt_tokens_total")
    for _ in range(3):
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 2}
        assert httpx.post(f"{proxy}/v1/completions", json=body).status_code == 200
    # Both replicas proxy the same upstream, whose kv router sends repeats to one worker.
    assert metric(proxy, "dyn_cached_prompt_tokens_total") > before


def test_upstream_4xx_keeps_its_status_and_message(proxy: str) -> None:
    # Fits the proxy's 16384-token context, not the upstream's 1024.
    prompt = " ".join(WORDS * 100)
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 4}
    reply = httpx.post(f"{proxy}/v1/completions", json=body, timeout=30)
    assert reply.status_code == 400, reply.text
    assert (
        f"maximum context length is {UPSTREAM_CONTEXT} tokens" in reply.json()["error"]["message"]
    )


def test_client_disconnect_reaches_the_upstream(proxy: str, upstream: str) -> None:
    route = {"route": "/v1/completions"}
    gone_before = metric(upstream, "dyn_frontend_requests_total", status="499", **route)
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 900, "stream": True}
    with httpx.stream("POST", f"{proxy}/v1/completions", json=body, timeout=30) as response:
        events = sse_events(response)
        for _ in range(3):
            next(events)
        assert metric(upstream, "dyn_frontend_inflight_requests", **route) == 1
    deadline = time.monotonic() + 10
    while metric(upstream, "dyn_frontend_inflight_requests", **route) != 0:
        assert time.monotonic() < deadline, "the upstream still serves the abandoned request"
        time.sleep(0.05)
    assert metric(upstream, "dyn_frontend_requests_total", status="499", **route) == gone_before + 1


def test_bench_compare_runs_against_the_proxy(proxy: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = [
        "bench", "--url", proxy, "--workload", "shared-prefix", "--groups", "2",
        "--prompts-per-group", "3", "--system-prompt-len", "48", "--question-len", "8",
        "--output-len", "4", "--max-concurrency", "2", "--compare", "round_robin,kv_approx",
        "--save-result", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    arms = json.loads(out.read_text())
    assert list(arms) == ["round_robin", "kv_approx"]
    for name, arm in arms.items():
        assert arm["strategy"] == name
        assert arm["completed"] == 6, arm["errors_by_status"]
        assert arm["failed"] == 0, arm["errors_by_status"]


# -- failing upstreams ------------------------------------------------------------------


@contextmanager
def failing_upstream(status: int) -> Iterator[str]:
    """A server that lists a model and answers every completion with ``status``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "broken", "object": "model"}]})

    async def completions(request: Request) -> JSONResponse:
        error = {"message": "the engine fell over", "type": "internal_error", "code": status}
        return JSONResponse({"error": error}, status_code=status)

    routes = [Route("/v1/models", models), Route("/v1/completions", completions, methods=["POST"])]
    with serve_in_thread(Starlette(routes=routes)) as url:
        yield url


def test_upstream_5xx_is_a_503(tmp_path: Path) -> None:
    with failing_upstream(500) as url:
        port = free_port()
        with dyn_up(PROXY_GRAPH, port, tmp_path / "proxy.log", *proxy_sets(url)):
            body = {"model": MODEL, "prompt": "Hello", "max_tokens": 4}
            reply = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body)
            assert reply.status_code == 503, reply.text
            assert reply.headers["retry-after"]
            assert "the engine fell over" in reply.json()["error"]["message"]
            stream = httpx.post(
                f"http://127.0.0.1:{port}/v1/completions", json={**body, "stream": True}
            )
            assert stream.status_code == 503


def test_upstream_dying_mid_stream_then_coming_back(tmp_path: Path) -> None:
    graph = upstream_graph(tmp_path, 20)
    up_port, proxy_port = free_port(), free_port()
    upstream_url, proxy_url = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{proxy_port}"
    body: dict[str, Any] = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 500}
    with (
        dyn_up(graph, up_port, tmp_path / "victim.log", options=ONE_PROCESS) as victim,
        dyn_up(PROXY_GRAPH, proxy_port, tmp_path / "proxy.log", *proxy_sets(upstream_url)),
    ):
        started = time.monotonic()
        with httpx.stream(
            "POST", f"{proxy_url}/v1/completions", json={**body, "stream": True}, timeout=30
        ) as response:
            assert response.status_code == 200
            events = sse_events(response)
            seen = [next(events) for _ in range(3)]
            victim.kill()
            seen.extend(events)  # must end, not hang
        assert time.monotonic() - started < 20
        assert seen[-1] == "[DONE]"
        error = json.loads(seen[-2])["error"]
        assert error["code"] == "unavailable"
        assert upstream_url in error["message"]

        # Out of routing while the upstream is down: a clean 503, at once.
        deadline = time.monotonic() + 10
        while True:
            reply = httpx.post(f"{proxy_url}/v1/completions", json={**body, "max_tokens": 2})
            assert reply.status_code == 503, reply.text
            if "no live instance" in reply.json()["error"]["message"]:
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)

        # Back in routing once it answers again.
        with dyn_up(graph, up_port, tmp_path / "victim2.log", options=ONE_PROCESS):
            deadline = time.monotonic() + 10
            while True:
                reply = httpx.post(f"{proxy_url}/v1/completions", json={**body, "max_tokens": 2})
                if reply.status_code == 200:
                    break
                assert reply.status_code == 503, reply.text
                assert time.monotonic() < deadline, reply.text
                time.sleep(0.1)
