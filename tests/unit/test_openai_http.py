"""The routes over a real socket with httpx: exact SSE bytes, every error, cancellation."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from _openai_fakes import FakeBackend, serving
from prometheus_client import CollectorRegistry, generate_latest

from dyn.errors import (
    BadRequestError,
    DeadlineExceeded,
    NoInstancesError,
    OverloadedError,
    SpecError,
    TransportError,
)
from dyn.observability.metrics import FrontendMetrics
from dyn.openai import GenerateOutput, OpenAIMetrics

pytestmark = pytest.mark.anyio

COMPLETION = {"model": "test-model", "prompt": "Hi", "max_tokens": 3}
CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "Hi"}]}


async def test_streamed_completion_bytes_are_exact() -> None:
    body = {**COMPLETION, "stream": True, "stream_options": {"include_usage": True}}
    async with serving(FakeBackend()) as url, httpx.AsyncClient(base_url=url) as http:
        resp = await http.post("/v1/completions", json=body, headers={"x-request-id": "req-1"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["x-request-id"] == "req-1"
    head = b'data: {"id":"cmpl-req-1","object":"text_completion","created":1700000000,"model":"test-model","choices":'
    assert resp.content == (
        head + b'[{"index":0,"text":"Hello","logprobs":null,"finish_reason":null}],"usage":null}\n\n'
        + head + b'[{"index":0,"text":" world","logprobs":null,"finish_reason":null}],"usage":null}\n\n'
        + head + b'[{"index":0,"text":"!","logprobs":null,"finish_reason":"length"}],"usage":null}\n\n'
        + head + b'[],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8,'
        b'"prompt_tokens_details":{"cached_tokens":2}}}\n\n'
        b"data: [DONE]\n\n"
    )  # fmt: skip


async def test_streamed_chat_bytes_without_usage() -> None:
    backend = FakeBackend([GenerateOutput(text='say "hi"', token_count=2, finish_reason="stop")])
    body = {**CHAT, "stream": True}
    async with serving(backend) as url, httpx.AsyncClient(base_url=url) as http:
        resp = await http.post("/v1/chat/completions", json=body, headers={"x-request-id": "r"})
    assert resp.content == (
        b'data: {"id":"chatcmpl-r","object":"chat.completion.chunk","created":1700000000,'
        b'"model":"test-model","choices":[{"index":0,"delta":{"role":"assistant",'
        b'"content":"say \\"hi\\""},"logprobs":null,"finish_reason":"stop"}]}\n\n'
        b"data: [DONE]\n\n"
    )


async def test_request_id_is_generated_and_echoed() -> None:
    backend = FakeBackend()
    async with serving(backend) as url, httpx.AsyncClient(base_url=url) as http:
        given = await http.post("/v1/completions", json=COMPLETION, headers={"x-request-id": "a1"})
        fresh = await http.post("/v1/completions", json=COMPLETION)
    assert given.headers["x-request-id"] == "a1"
    assert given.json()["id"] == "cmpl-a1"
    assert backend.requests[0].request_id == "a1"
    generated = fresh.headers["x-request-id"]
    assert len(generated) == 32
    assert backend.requests[1].request_id == generated


def _error(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "message"),
    [
        ("/v1/completions", b"{not json", 400, None, "not valid JSON"),
        ("/v1/completions", b"[1]", 400, None, "must be a JSON object"),
        ("/v1/completions", {"model": "test-model"}, 400, "prompt", "missing required field"),
        (
            "/v1/completions",
            {**COMPLETION, "max_tokens": "3"},
            400,
            "max_tokens",
            "Expected `int | null`",
        ),
        ("/v1/completions", {**COMPLETION, "max_tokens": 0}, 400, "max_tokens", "at least 1"),
        (
            "/v1/completions",
            {**COMPLETION, "max_tokens": 500},
            400,
            "max_tokens",
            "maximum context length is 128",
        ),
        ("/v1/completions", {**COMPLETION, "n": 2}, 400, "n", "only n=1"),
        ("/v1/completions", {**COMPLETION, "prompt": ["a", "b"]}, 400, "prompt", "one prompt"),
        ("/v1/completions", {**COMPLETION, "prompt": [1, 2]}, 400, "prompt[0]", "Expected `str`"),
        ("/v1/completions", {**COMPLETION, "temperature": 3}, 400, "temperature", "[0, 2]"),
        ("/v1/completions", {**COMPLETION, "top_p": 0}, 400, "top_p", "(0, 1]"),
        ("/v1/completions", {**COMPLETION, "min_tokens": 4}, 400, "min_tokens", "between 0"),
        (
            "/v1/completions",
            {**COMPLETION, "model": "gpt-x"},
            404,
            "model",
            "available: test-model",
        ),
        (
            "/v1/chat/completions",
            {"model": "test-model"},
            400,
            "messages",
            "missing required field",
        ),
        ("/v1/chat/completions", {**CHAT, "messages": []}, 400, "messages", "at least one"),
        (
            "/v1/chat/completions",
            {**CHAT, "messages": [{"content": "x"}]},
            400,
            "messages[0].role",
            "missing required field",
        ),
        (
            "/v1/chat/completions",
            {**CHAT, "max_completion_tokens": 0},
            400,
            "max_completion_tokens",
            "at least 1",
        ),
        (
            "/v1/chat/completions",
            {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            400,
            "messages[0].content",
            "send text parts",
        ),
    ],
)
async def test_invalid_requests(
    path: str, body: Any, status: int, param: str | None, message: str
) -> None:
    backend = FakeBackend()
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with serving(backend) as url, httpx.AsyncClient(base_url=url) as http:
        resp = await http.post(path, content=content, headers={"x-request-id": "bad"})
    assert resp.status_code == status
    assert resp.headers["x-request-id"] == "bad"
    error = _error(resp)
    assert error["param"] == param
    assert message in error["message"]
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    assert backend.requests == []


async def test_prompt_that_leaves_too_little_room_is_400() -> None:
    backend = FakeBackend([GenerateOutput(text="x", token_count=1, prompt_tokens=100)])
    async with serving(backend) as url, httpx.AsyncClient(base_url=url) as http:
        resp = await http.post("/v1/completions", json={**COMPLETION, "max_tokens": 50})
        fits = await http.post("/v1/completions", json={**COMPLETION, "max_tokens": 28})
        chat = await http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 29})
    assert resp.status_code == 400
    error = _error(resp)
    assert error["param"] == "max_tokens"
    assert "100 prompt tokens + max_tokens 50" in error["message"]
    assert fits.status_code == 200
    assert chat.status_code == 400
    assert _error(chat)["param"] == "max_tokens"
    assert backend.closed.is_set()


async def test_chat_prompt_longer_than_the_context_is_400() -> None:
    backend = FakeBackend([GenerateOutput(text="x", token_count=1, prompt_tokens=128)])
    async with serving(backend) as url, httpx.AsyncClient(base_url=url) as http:
        resp = await http.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 400
    assert _error(resp)["param"] == "messages"


async def test_body_over_the_limit_is_413() -> None:
    async with (
        serving(FakeBackend(), max_body_bytes=1000) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        declared = await http.post("/v1/completions", json={**COMPLETION, "prompt": "x" * 2000})

        async def chunks() -> Any:  # no content-length: the limit applies while reading
            yield json.dumps({**COMPLETION, "prompt": "x" * 2000}).encode()

        streamed = await http.post("/v1/completions", content=chunks())
    for resp in (declared, streamed):
        assert resp.status_code == 413
        assert "larger than 1000 bytes" in _error(resp)["message"]


@pytest.mark.parametrize(
    ("error", "status", "code", "retry_after"),
    [
        (NoInstancesError("no live instance of processor/generate"), 503, "unavailable", True),
        (OverloadedError("queue full"), 429, "overloaded", True),
        (DeadlineExceeded("deadline passed"), 504, "deadline_exceeded", False),
        (BadRequestError("bad prompt"), 400, "bad_request", False),
        (SpecError(["weird"]), 500, "internal", False),
    ],
)
async def test_backend_errors_map_by_code(
    error: Exception, status: int, code: str, retry_after: bool
) -> None:
    async with serving(FakeBackend(error=error)) as url, httpx.AsyncClient(base_url=url) as http:
        resp = await http.post("/v1/completions", json={**COMPLETION, "stream": True})
    assert resp.status_code == status
    assert _error(resp)["code"] == code
    assert str(error) in _error(resp)["message"]
    assert ("retry-after" in resp.headers) is retry_after


async def test_a_bug_is_500_without_a_stack_trace(caplog: pytest.LogCaptureFixture) -> None:
    backend = FakeBackend(error=RuntimeError("secret detail"))
    async with serving(backend) as url, httpx.AsyncClient(base_url=url) as http:
        resp = await http.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 500
    assert "secret" not in resp.text
    assert "Traceback" not in resp.text
    assert _error(resp)["type"] == "internal_error"
    assert "secret detail" in caplog.text  # the operator still sees it


async def test_failure_mid_stream_is_an_error_event_then_done() -> None:
    backend = FakeBackend(error=TransportError("worker died"), fail_after=1)
    async with serving(backend) as url, httpx.AsyncClient(base_url=url) as http:
        resp = await http.post("/v1/completions", json={**COMPLETION, "stream": True})
        whole = await http.post("/v1/completions", json=COMPLETION)
    assert resp.status_code == 200
    events = resp.content.split(b"\n\n")
    assert json.loads(events[0][6:])["choices"][0]["text"] == "Hello"
    assert json.loads(events[1][6:]) == {
        "error": {
            "message": "worker died",
            "type": "service_unavailable",
            "param": None,
            "code": "unavailable",
        }
    }
    assert events[2:] == [b"data: [DONE]", b""]
    assert whole.status_code == 503  # not streamed: the status can still say it


async def test_client_going_away_cancels_the_backend() -> None:
    registry = CollectorRegistry()
    metrics = OpenAIMetrics(registry, FrontendMetrics(registry))
    outputs = [GenerateOutput(text="t", token_count=1, prompt_tokens=1)] * 1000
    backend = FakeBackend(outputs, delay=0.01)
    async with (
        serving(backend, metrics=metrics) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        async with http.stream("POST", "/v1/completions", json={**COMPLETION, "stream": True}) as r:
            async for _ in r.aiter_bytes():
                break
        with anyio.fail_after(5):
            await backend.closed.wait()
        with anyio.fail_after(5):
            while 'status="499"' not in generate_latest(registry).decode():  # noqa: ASYNC110
                await anyio.sleep(0.01)
    text = generate_latest(registry).decode()
    assert 'dyn_frontend_inflight_requests{route="/v1/completions"} 0.0' in text
