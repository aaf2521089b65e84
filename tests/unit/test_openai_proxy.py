"""The openai_proxy engine against a scripted upstream: a real HTTP server on loopback
that answers with handlers written in httpx's request/response types."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from _upstream_double import UpstreamDouble

from dyn.engines.base import EngineOutput, EngineRequest
from dyn.engines.openai_proxy import OpenAIProxyConfig, OpenAIProxyEngine
from dyn.errors import BadRequestError, CallError, OverloadedError, TransportError
from dyn.tokenizer import load_tokenizer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

TOKENIZER = load_tokenizer(None)
MODELS = {"object": "list", "data": [{"id": "up-model", "object": "model"}]}


def sse(*items: Any, done: bool = True) -> bytes:
    lines = [f"data: {json.dumps(item)}\n\n" for item in items]
    return ("".join(lines) + ("data: [DONE]\n\n" if done else "")).encode()


def chunk(text: str, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "text": text, "finish_reason": finish, **extra}]}


def usage(cached: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    if cached is not None:
        body["prompt_tokens_details"] = {"cached_tokens": cached}
    return {"choices": [], "usage": body}


class Stream(httpx.AsyncByteStream):
    """A body that can hang after its parts and records being closed."""

    def __init__(self, parts: list[bytes], hang: bool = False) -> None:
        self.parts = parts
        self.hang = hang
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        import anyio

        for part in self.parts:
            yield part
        if self.hang:
            await anyio.sleep_forever()

    async def aclose(self) -> None:
        self.closed = True


Handler = Callable[[httpx.Request], httpx.Response]


class DoubledEngine(OpenAIProxyEngine):
    """The engine, its connections opened to a local double whatever its URL says."""

    def __init__(self, settings: OpenAIProxyConfig, double: UpstreamDouble) -> None:
        super().__init__(settings, TOKENIZER, opener=double.open)
        self.double = double

    async def aclose(self) -> None:
        await super().aclose()
        await self.double.aclose()


def engine(handler: Handler, **config: Any) -> DoubledEngine:
    settings = msgspec.convert({"upstream": "http://up:8000/v1/", **config}, OpenAIProxyConfig)
    return DoubledEngine(settings, UpstreamDouble(handler))


def request(text: str = "Hello there", **fields: Any) -> EngineRequest:
    return EngineRequest(
        request_id="r1",
        tokens=TOKENIZER.encode(text),
        max_tokens=fields.pop("max_tokens", 4),
        **fields,
    )


def answering(body: bytes, seen: list[httpx.Request] | None = None) -> Handler:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v1/models":
            return httpx.Response(200, json=MODELS)
        if seen is not None:
            seen.append(req)
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    return handler


async def collect(proxy: OpenAIProxyEngine, req: EngineRequest) -> list[EngineOutput]:
    try:
        return [out async for out in proxy.generate(req)]
    finally:
        await proxy.aclose()


async def test_forwards_text_and_relays_the_answer_as_text() -> None:
    seen: list[httpx.Request] = []
    body = sse(chunk(" big"), chunk(" world"), chunk("!", "length"), usage(None))
    proxy = engine(answering(body, seen), api_key="sk-1")
    outputs = await collect(proxy, request(ignore_eos=True))
    sent = json.loads(seen[0].content)
    assert seen[0].url == "http://up:8000/v1/completions"
    assert seen[0].headers["authorization"] == "Bearer sk-1"
    assert seen[0].headers["x-request-id"] == "r1"
    assert sent == {
        "model": "up-model",
        "prompt": "Hello there",
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    # The upstream's text as it is: no token ids, so nothing for the processor to decode.
    assert "".join(o.text or "" for o in outputs) == " big world!"
    assert [o.tokens for o in outputs] == [[], [], []]
    assert [o.finish_reason for o in outputs] == [None, None, "length"]


async def test_cached_tokens_ride_on_the_finishing_output_when_they_come_last() -> None:
    body = sse(chunk("a"), chunk("b", "stop"), usage(7))
    outputs = await collect(engine(answering(body), model="up-model"), request())
    assert [o.cached_tokens for o in outputs] == [0, 7]


async def test_cached_tokens_known_early_go_on_the_first_output_once() -> None:
    early = {**chunk("a"), **usage(5)}
    early["choices"] = chunk("a")["choices"]
    body = sse(early, chunk("b", "length"), usage(5))
    proxy = engine(answering(body), model="up-model")
    outputs = await collect(proxy, request())
    assert [o.cached_tokens for o in outputs] == [5, 0]
    assert proxy.cached_prompt_tokens_total == 5


async def test_token_ids_mode_sends_and_returns_ids() -> None:
    seen: list[httpx.Request] = []
    body = sse(chunk("x", token_ids=[11, 12]), chunk("", "length", token_ids=[13]))
    outputs = await collect(engine(answering(body, seen), token_ids=True), request())
    sent = json.loads(seen[0].content)
    assert sent["prompt"] == TOKENIZER.encode("Hello there")
    assert sent["return_token_ids"] is True
    assert [o.tokens for o in outputs] == [[11, 12], [13]]


@pytest.mark.parametrize(
    ("status", "kind", "code", "text"),
    [
        (400, BadRequestError, "bad_request", "prompt is too long"),
        (429, OverloadedError, "overloaded", "overloaded"),
        (500, TransportError, "unavailable", "answered 500"),
        (503, TransportError, "unavailable", "answered 503"),
        (401, TransportError, "unavailable", "api_key"),
    ],
)
async def test_upstream_statuses_map_to_dyn_errors(
    status: int, kind: type[CallError], code: str, text: str
) -> None:
    error = {"error": {"message": "prompt is too long", "type": "x", "code": status}}

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=error)

    with pytest.raises(kind, match=text) as caught:
        await collect(engine(handler, model="m"), request())
    assert caught.value.code == code


async def test_unreachable_upstream_is_unavailable() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=req)

    with pytest.raises(CallError, match="unreachable") as caught:
        await collect(engine(handler, model="m"), request())
    assert caught.value.code == "unavailable"


async def test_an_in_band_error_or_a_cut_stream_ends_with_an_error() -> None:
    in_band = sse(chunk("a"), {"error": {"message": "engine died", "code": 500}})
    with pytest.raises(CallError, match="engine died") as caught:
        await collect(engine(answering(in_band), model="m"), request())
    assert caught.value.code == "unavailable"
    cut = sse(chunk("a"), done=False)
    with pytest.raises(CallError, match="before the answer finished"):
        await collect(engine(answering(cut), model="m"), request())


async def test_closing_the_generator_closes_the_upstream_response() -> None:
    stream = Stream([sse(chunk("a"), done=False)], hang=True)

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=stream)

    proxy = engine(handler, model="m")
    outputs = proxy.generate(request())
    first = await anext(outputs)
    assert first.text == "a"  # relayed as text, not re-encoded to token ids
    assert proxy.requests_inflight == 1
    await outputs.aclose()  # type: ignore[attr-defined]
    with anyio.fail_after(5):  # the double sees the connection close across a socket
        while not stream.closed:  # noqa: ASYNC110
            await anyio.sleep(0.01)
    assert stream.closed
    assert proxy.requests_inflight == 0
    await proxy.aclose()


async def test_probe_finds_the_model_or_says_what_is_served() -> None:
    proxy = engine(answering(b""))
    assert await proxy.probe() == "up-model"
    await proxy.aclose()
    wrong = engine(answering(b""), model="other")
    with pytest.raises(CallError, match="does not serve model 'other'; it serves up-model"):
        await wrong.probe()
    await wrong.aclose()


def test_config_takes_one_upstream_or_one_per_replica() -> None:
    config = msgspec.convert({"upstreams": ["http://a/v1", "http://b/"]}, OpenAIProxyConfig)
    assert [config.upstream_for(i) for i in range(3)] == ["http://a", "http://b", "http://a"]
    with pytest.raises(msgspec.ValidationError, match="exactly one of the two"):
        msgspec.convert({}, OpenAIProxyConfig)
    with pytest.raises(msgspec.ValidationError, match="exactly one of the two"):
        msgspec.convert({"upstream": "http://a", "upstreams": ["http://b"]}, OpenAIProxyConfig)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"upstream": "ftp://a"}, OpenAIProxyConfig)


async def test_outputs_of_one_read_say_the_next_is_ready() -> None:
    # One body part holding three deltas, then a part with the finish and the usage.
    parts = [sse(chunk("a"), chunk("b"), chunk("c"), done=False), sse(chunk("d", "stop"))]

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Stream(parts))

    outputs = await collect(engine(handler, model="m"), request())
    assert [(o.text, o.more_ready) for o in outputs] == [
        ("a", True),
        ("b", True),
        ("c", False),
        ("d", False),
    ]


async def test_unconsumed_fields_are_spliced_in_and_dyns_own_come_last() -> None:
    seen: list[httpx.Request] = []
    body = sse(chunk("x", "length"), usage(None))
    extra = b'{"top_k":7,"logit_bias":{"1": -2.50},"vendor":null}'
    req = request(max_tokens=3, text="Hi there")
    req = msgspec.structs.replace(req, extra_fields=extra)
    await collect(engine(answering(body, seen), model="m"), req)
    sent = seen[0].content
    assert sent.startswith(b'{"top_k":7,"logit_bias":{"1": -2.50},"vendor":null,"model":"m"')
    decoded = json.loads(sent)
    assert decoded["prompt"] == "Hi there"  # the text as given, not decoded from ids
    assert decoded["max_tokens"] == 3


async def test_usage_is_the_upstreams_or_dyns_count_without_one() -> None:
    counted = sse(chunk("a"), chunk("b", "stop"), usage(4))
    outputs = await collect(engine(answering(counted), model="m"), request())
    assert outputs[-1].usage is not None
    assert (outputs[-1].usage.prompt_tokens, outputs[-1].usage.completion_tokens) == (3, 2)
    assert outputs[-1].usage.cached_tokens == 4
    uncounted = sse(chunk(" big"), chunk(" world", "stop"))
    outputs = await collect(engine(answering(uncounted), model="m"), request("Hello there"))
    assert outputs[-1].usage is not None
    assert outputs[-1].usage.prompt_tokens == len(TOKENIZER.encode("Hello there"))
    assert outputs[-1].usage.completion_tokens == len(TOKENIZER.encode(" big world"))
