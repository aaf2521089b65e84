"""graphs/proxy.yaml relays what dyn does not consume: request fields, text, usage.

The upstream is a scripted OpenAI server (a real uvicorn server on loopback) that
records every body it is sent and streams a fixed answer with its own usage, so the
test can tell the upstream's numbers from dyn's. One test puts two of them behind the
proxy and kills the first mid-stream, to see what a migrated request resends.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from _dyn_graph import dyn_up, free_port, serve_in_thread

from dyn.graph import load_graph_text
from dyn.launch.base import LaunchObserver
from dyn.launch.inprocess import InProcessLauncher
from dyn.launch.role_classes import role_class
from dyn.roles.processor import Processor
from dyn.roles.proxy_worker import ProxyWorker
from dyn.tokenizer import Tokenizer, load_tokenizer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
PROXY_GRAPH = ROOT / "graphs" / "proxy.yaml"
MODEL = "dyn-proxy"
# What the scripted upstream reports: numbers dyn's own counting would never give.
UPSTREAM_USAGE: dict[str, Any] = {
    "prompt_tokens": 111,
    "completion_tokens": 7,
    "total_tokens": 118,
    "prompt_tokens_details": {"cached_tokens": 42},
}


@dataclass
class Script:
    """What the scripted upstream answers, and what it was sent."""

    deltas: list[str] = field(default_factory=lambda: [f" w{i}" for i in range(6)])
    usage: dict[str, Any] | None = field(default_factory=lambda: dict(UPSTREAM_USAGE))
    die_after: int | None = None  # cut the connection after this many deltas
    bodies: list[bytes] = field(default_factory=list)

    def events(self) -> Iterator[bytes]:
        body = json.loads(self.bodies[-1])
        asked_usage = (body.get("stream_options") or {}).get("include_usage")
        for i, delta in enumerate(self.deltas):
            if self.die_after is not None and i == self.die_after:
                raise RuntimeError("the scripted upstream dies mid-stream")
            finish = "length" if i == len(self.deltas) - 1 else None
            choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}
            chunk = {"id": "cmpl-up", "object": "text_completion", "choices": [choice]}
            yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        if asked_usage and self.usage is not None:
            last: dict[str, Any] = {"id": "cmpl-up", "choices": [], "usage": self.usage}
            yield b"data: " + json.dumps(last).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"


@contextmanager
def scripted_upstream(script: Script) -> Iterator[str]:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "up", "object": "model"}]})

    async def completions(request: Request) -> StreamingResponse:
        script.bodies.append(await request.body())

        async def stream() -> AsyncIterator[bytes]:
            for event in script.events():
                yield event
                await anyio.sleep(0.005)

        return StreamingResponse(stream(), media_type="text/event-stream")

    routes = [Route("/v1/models", models), Route("/v1/completions", completions, methods=["POST"])]
    with serve_in_thread(Starlette(routes=routes), log_level="critical") as url:
        yield url


def proxy_sets(*upstreams: str) -> list[str]:
    return [
        f"worker.upstreams=[{', '.join(upstreams)}]",
        f"worker.replicas={len(upstreams)}",
        "worker.health_interval_s=0.3",
        "processor.strategy=round_robin",
    ]


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[Script, str]]:
    script = Script()
    with scripted_upstream(script) as url:
        yield script, url


@pytest.fixture(scope="module")
def proxy(scripted: tuple[Script, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("passthrough")
    port = free_port()
    with dyn_up(PROXY_GRAPH, port, tmp / "proxy.log", *proxy_sets(scripted[1])):
        yield f"http://127.0.0.1:{port}"


def sse_data(response: httpx.Response) -> list[str]:
    return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def test_unknown_fields_reach_the_upstream_verbatim(
    proxy: str, scripted: tuple[Script, str]
) -> None:
    script, _ = scripted
    # Written by hand: "2.50" and the spacing would not survive a decode and re-encode.
    raw = (
        b'{"model": "dyn-proxy", "prompt": "Hello", "max_tokens": 6,'
        b' "logit_bias": {"50256": -100}, "top_k": 7, "temperature": 0.25, "seed": 3,'
        b' "stop": ["\\n\\n"], "response_format": {"type": "json_object"},'
        b' "vendor_x": {"nested": [1, 2.50, null], "flag": true}}'
    )
    reply = httpx.post(
        f"{proxy}/v1/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert reply.status_code == 200, reply.text
    sent = script.bodies[-1]
    for verbatim in (
        b'"logit_bias":{"50256": -100}',
        b'"top_k":7',
        b'"temperature":0.25',
        b'"seed":3',
        b'"stop":["\\n\\n"]',
        b'"response_format":{"type": "json_object"}',
        b'"vendor_x":{"nested": [1, 2.50, null], "flag": true}',
    ):
        assert verbatim in sent, sent
    body = json.loads(sent)
    # What dyn consumes it sets itself: the upstream's model, the prompt, the stream.
    assert body["model"] == "up"
    assert body["prompt"] == "Hello"
    assert body["max_tokens"] == 6
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}

    # A chat's fields too, beside the prompt dyn renders from its messages.
    chat = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi!"}],
        "max_completion_tokens": 6,
        "top_k": 3,
        "user": "u-1",
    }
    assert httpx.post(f"{proxy}/v1/chat/completions", json=chat).status_code == 200
    body = json.loads(script.bodies[-1])
    assert body["prompt"] == "user: Hi!\nassistant:"
    assert body["top_k"] == 3
    assert body["user"] == "u-1"
    assert "messages" not in body
    assert "max_completion_tokens" not in body


def test_usage_is_the_upstreams(proxy: str) -> None:
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 6}
    whole = httpx.post(f"{proxy}/v1/completions", json=body).json()
    assert whole["usage"] == UPSTREAM_USAGE
    assert whole["choices"][0]["text"] == " w0 w1 w2 w3 w4 w5"

    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{proxy}/v1/completions", json=streamed) as response:
        events = sse_data(response)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"] == UPSTREAM_USAGE
    texts = [json.loads(e)["choices"][0]["text"] for e in events[:-2]]
    assert "".join(texts) == " w0 w1 w2 w3 w4 w5"
    assert len(texts) == 6  # one client event per upstream chunk


def test_include_usage_is_asked_for_and_stripped(proxy: str, scripted: tuple[Script, str]) -> None:
    script, _ = scripted
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 6, "stream": True}
    with httpx.stream("POST", f"{proxy}/v1/completions", json=body) as response:
        events = sse_data(response)
    assert json.loads(script.bodies[-1])["stream_options"] == {"include_usage": True}
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 6
    assert all("usage" not in c and c["choices"] for c in chunks), chunks

    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    with httpx.stream("POST", f"{proxy}/v1/chat/completions", json=chat) as response:
        events = sse_data(response)
    assert json.loads(script.bodies[-1])["stream_options"] == {"include_usage": True}
    assert all("usage" not in json.loads(e) for e in events[:-1])


def test_a_migrated_request_resends_the_prompt_and_the_text_so_far(tmp_path: Path) -> None:
    dying = Script(deltas=[" alpha", " beta", " gamma", " delta"], die_after=2)
    spare = Script(deltas=[" x", " y"])
    with scripted_upstream(dying) as first, scripted_upstream(spare) as second:
        port = free_port()
        with dyn_up(PROXY_GRAPH, port, tmp_path / "proxy.log", *proxy_sets(first, second)):
            body = {"model": MODEL, "prompt": "Once", "max_tokens": 10, "seed": 5}
            url = f"http://127.0.0.1:{port}/v1/completions"
            replies = []
            for _ in range(2):  # round robin: at least one reaches the dying upstream
                reply = httpx.post(url, json=body)
                assert reply.status_code == 200, reply.text
                replies.append(reply.json())
    texts = [r["choices"][0]["text"] for r in replies]
    assert " alpha beta x y" in texts, texts
    migrated = replies[texts.index(" alpha beta x y")]
    resent = [json.loads(b) for b in spare.bodies if b"alpha" in b]
    assert resent, spare.bodies
    # The prompt as the client wrote it, then the text the client already has; the
    # remaining length is what is left after dyn's count of that text.
    tokenizer = load_tokenizer(None)  # graphs/proxy.yaml names none: the built-in one
    so_far = len(tokenizer.encode(" alpha beta"))
    assert resent[0]["prompt"] == "Once alpha beta"
    assert resent[0]["max_tokens"] == 10 - so_far
    assert resent[0]["seed"] == 5
    # Usage: dyn's count of the prompt and of the text before the resend, then the
    # upstream's count of the rest.
    assert migrated["usage"]["prompt_tokens"] == len(tokenizer.encode("Once"))
    assert migrated["usage"]["completion_tokens"] == so_far + UPSTREAM_USAGE["completion_tokens"]


# -- no tokenizer call per relayed token --------------------------------------------------

GRAPH = """
name: counted
transport: inproc
model: {{name: dyn-proxy, max_model_len: 4096}}
components:
  processor:
    uses: processor
    depends_on: [worker]
    config: {{strategy: kv_approx}}
  worker:
    uses: proxy_worker
    config: {{upstream: "{UPSTREAM}", health_interval_s: 0.3}}
"""


class CountingTokenizer(Tokenizer):
    """The graph's tokenizer, counting the calls made to it."""

    def __init__(self, inner: Tokenizer) -> None:
        self.inner = inner
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def encode(self, text: str) -> list[int]:
        self._count("encode")
        return self.inner.encode(text)

    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        self._count("decode")
        return self.inner.decode(token_ids, skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size

    @property
    def eos_token_id(self) -> int:
        return self.inner.eos_token_id


@pytest.mark.anyio
async def test_relaying_calls_no_tokenizer_per_token() -> None:
    script = Script(deltas=[f" t{i}" for i in range(64)])
    with scripted_upstream(script) as url:
        graph = load_graph_text(GRAPH.format(UPSTREAM=url), resolve_role=role_class)
        launcher, stop, ready = InProcessLauncher(), anyio.Event(), anyio.Event()

        class Observer(LaunchObserver):
            def graph_ready(self, url: str | None, seconds: float) -> None:
                ready.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(launcher.run, graph, Observer(), stop)
            with anyio.fail_after(30):
                await ready.wait()
                assert launcher.runtime is not None
                processor = next(c for _, c in launcher.components if isinstance(c, Processor))
                worker = next(c for _, c in launcher.components if isinstance(c, ProxyWorker))
                counted = CountingTokenizer(processor.tokenizer)
                processor.tokenizer = counted
                worker.engine.tokenizer = counted
                client = launcher.runtime.client("processor")
                await client.wait_for_instances("generate")
                request = {"request_id": "r1", "prompt": "Hello there", "max_tokens": 64}
                async with client.stream("generate", request) as items:
                    outputs = [msgspec.to_builtins(item) async for item in items]
            stop.set()
    assert "".join(o["text"] for o in outputs) == "".join(script.deltas)
    assert outputs[-1]["usage"]["completion_tokens"] == UPSTREAM_USAGE["completion_tokens"]
    # The prompt is tokenized once, for routing; the 64 deltas not at all.
    assert counted.calls.get("encode") == 1, counted.calls
    assert counted.calls.get("decode", 0) == 0, counted.calls
    assert json.loads(script.bodies[-1])["prompt"] == "Hello there"
