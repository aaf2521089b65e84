"""The proxy's own HTTP/1.1 client: body framings, events cut across reads, keep-alive,
and an upstream that hangs up mid-answer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import msgspec
import pytest
from test_openai_proxy import MODELS, Stream, chunk, collect, engine, request, sse, usage

from dyn.engines.openai_proxy import OpenAIProxyConfig, OpenAIProxyEngine
from dyn.engines.openai_proxy._chunked import BodyDecoder, HttpParseError, parse_head
from dyn.errors import CallError

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

BODY = sse(chunk(" big"), chunk(" world"), chunk("!", "length"), usage(3))


def texts(outputs: list[Any]) -> list[tuple[str, str | None]]:
    return [(o.text, o.finish_reason) for o in outputs]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_either_body_framing_gives_the_same_answer(framing: str) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if framing == "chunked":
            return httpx.Response(200, stream=Stream([BODY[:7], BODY[7:50], BODY[50:]]))
        return httpx.Response(200, content=BODY)

    outputs = await collect(engine(handler, model="m"), request())
    assert texts(outputs) == [(" big", None), (" world", None), ("!", "length")]
    assert outputs[-1].usage is not None
    assert outputs[-1].usage.cached_tokens == 3


async def test_an_event_cut_across_reads_is_put_back_together() -> None:
    # Every event cut in the middle of its JSON, and one read ending between the two
    # newlines that end an event.
    cut = [BODY[i : i + 5] for i in range(0, len(BODY), 5)]
    blank = BODY.index(b"\n\n") + 1
    for parts in (cut, [BODY[:blank], BODY[blank:]]):

        def answer(req: httpx.Request, parts: list[bytes] = parts) -> httpx.Response:
            return httpx.Response(200, stream=Stream(parts))

        proxy = engine(answer, model="m")
        outputs = await collect(proxy, request())
        assert texts(outputs) == [(" big", None), (" world", None), ("!", "length")]


def test_chunked_framing_fed_one_byte_at_a_time() -> None:
    payload = b"data: {}\n\n" * 3
    wire = b"5;ext=1\r\n" + payload[:5] + b"\r\n" + b"%x\r\n" % (len(payload) - 5)
    wire += payload[5:] + b"\r\n0\r\ntrailer: x\r\n\r\n"
    decoder = BodyDecoder(length=None, chunked=True, keep_alive=True)
    got = b"".join(decoder.feed(wire[i : i + 1]) for i in range(len(wire)))
    assert got == payload
    assert decoder.complete
    whole = BodyDecoder(length=None, chunked=True, keep_alive=True)
    assert whole.feed(wire) == payload
    assert whole.complete
    with pytest.raises(HttpParseError, match="chunk size"):
        BodyDecoder(length=None, chunked=True, keep_alive=True).feed(b"zz\r\n")


def test_response_heads() -> None:
    status, body = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
    assert (status, body.feed(b"abcdef"), body.complete, body.keep_alive) == (
        200,
        b"abcd",
        True,
        True,
    )
    _, closing = parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n")
    assert not closing.keep_alive
    _, until_eof = parse_head(b"HTTP/1.0 200 OK\r\n\r\n")
    assert until_eof.until_eof
    assert not until_eof.keep_alive
    with pytest.raises(HttpParseError):
        parse_head(b"SSH-2.0-OpenSSH\r\n\r\n")


async def test_connections_are_kept_alive_between_requests() -> None:
    for framing in ("content-length", "chunked"):

        def handler(req: httpx.Request, framing: str = framing) -> httpx.Response:
            if req.url.path == "/v1/models":
                return httpx.Response(200, json=MODELS)
            if framing == "chunked":
                return httpx.Response(200, stream=Stream([BODY]))
            return httpx.Response(200, content=BODY)

        proxy = engine(handler)
        try:
            for _ in range(3):
                outputs = [out async for out in proxy.generate(request())]
                assert outputs[-1].finish_reason == "length"
            # The probe and three answers, one after another on one connection.
            assert proxy.double.connections == 1
        finally:
            await proxy.aclose()


async def test_an_upstream_hanging_up_mid_answer_is_unreachable_then_recovers() -> None:
    answers: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(0)
        event = sse(chunk("a"), done=False)
        head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        if not answers:  # the first answer stops inside its body and the socket closes
            writer.write(head + b"%x\r\n%s\r\n" % (len(event), event))
        else:
            rest = sse(chunk("b", "stop"))
            writer.write(head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(event + rest), event + rest))
        answers.append(event)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = msgspec.convert(
        {"upstream": f"http://127.0.0.1:{port}", "model": "m"}, OpenAIProxyConfig
    )
    proxy = OpenAIProxyEngine(settings)
    try:
        seen: list[str | None] = []

        async def first_answer() -> None:
            async for out in proxy.generate(request()):
                seen.append(out.text)

        with pytest.raises(CallError, match=r"unreachable.*mid-answer") as caught:
            await first_answer()
        assert seen == ["a"]
        assert caught.value.code == "unavailable"
        outputs = [out async for out in proxy.generate(request())]
        assert [o.text for o in outputs] == ["a", "b"]
    finally:
        await proxy.aclose()
        server.close()


async def test_request_carries_the_key_and_the_request_id_once() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, content=BODY)

    await collect(engine(handler, model="m", api_key="sk-2"), request())
    assert seen[0].headers.get_list("authorization") == ["Bearer sk-2"]
    assert seen[0].headers.get_list("x-request-id") == ["r1"]
    assert json.loads(seen[0].content)["model"] == "m"
