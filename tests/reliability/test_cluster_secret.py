"""The cluster secret: a tcp or grpc server with one refuses callers that cannot prove it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from dyn import plugins
from dyn.errors import ProtocolError
from dyn.runtime.context import Context
from dyn.transports import _auth
from dyn.transports._tcp_frames import FLAG_AUTH, encode_preface, encode_request, parse_preface
from dyn.transports.base import Transport

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

SECRET = "s3cret-of-the-cluster"
CALLS: list[str] = []


async def recording_handler(path: str, payload: bytes, ctx: Context) -> AsyncIterator[bytes]:
    CALLS.append(path)
    yield b"ok:" + payload


def make(name: str, **options: Any) -> Transport:
    transport: Transport = plugins.load("dyn.transports", name)(**options)
    return transport


async def call(client: Transport, address: str) -> list[bytes]:
    with anyio.fail_after(10):
        async with client.call(address, "demo/x/generate/1", b"hi", {}) as items:
            return [item async for item in items]


@pytest.fixture(params=["tcp", "grpc"])
async def secured(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, str]]:
    """A server holding SECRET (from the environment), and its address."""
    name = str(request.param)
    monkeypatch.setenv(_auth.ENV_CLUSTER_SECRET, SECRET)
    server = make(name)
    monkeypatch.delenv(_auth.ENV_CLUSTER_SECRET)
    CALLS.clear()
    async with anyio.create_task_group() as tasks:
        address = await tasks.start(
            lambda task_status: server.serve(
                recording_handler, host="127.0.0.1", task_status=task_status
            )
        )
        try:
            yield name, address
        finally:
            tasks.cancel_scope.cancel()


async def test_caller_without_the_secret_is_refused(secured: tuple[str, str]) -> None:
    name, address = secured
    client = make(name)
    try:
        for _ in range(2):  # and again on a fresh connection
            with pytest.raises(ProtocolError, match="requires a cluster secret"):
                await call(client, address)
    finally:
        await client.aclose()
    assert CALLS == []


async def test_caller_with_a_wrong_secret_is_refused(secured: tuple[str, str]) -> None:
    name, address = secured
    client = make(name, cluster_secret="not-the-secret")
    try:
        for _ in range(2):
            with pytest.raises(ProtocolError, match="cluster secret rejected"):
                await call(client, address)
    finally:
        await client.aclose()
    assert CALLS == []


async def test_caller_with_the_secret_is_served(secured: tuple[str, str]) -> None:
    name, address = secured
    client = make(name, cluster_secret=SECRET)
    try:
        assert await call(client, address) == [b"ok:hi"]
        assert await call(client, address) == [b"ok:hi"]
    finally:
        await client.aclose()
    assert len(CALLS) == 2


async def test_tcp_peer_sending_frames_without_the_handshake_runs_nothing() -> None:
    """An old or hostile client that ignores the auth flag and sends a REQUEST at once."""
    server = make("tcp", cluster_secret=SECRET)
    CALLS.clear()
    request = encode_request(1, "demo/x/generate/1", {}, b"hi")
    async with anyio.create_task_group() as tasks:
        address = await tasks.start(
            lambda task_status: server.serve(
                recording_handler, host="127.0.0.1", task_status=task_status
            )
        )
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        with anyio.fail_after(10):
            async with await anyio.connect_tcp(host, int(port)) as sock:
                # Exactly what the server reads as the proof, so it closes with no unread
                # bytes (a FIN, not a reset that could drop the reply before it is read).
                answer = (request * 8)[: _auth.NONCE_BYTES + _auth.TAG_BYTES]
                await sock.send(encode_preface(1) + answer)
                reply = b""
                try:
                    while True:
                        reply += await sock.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass
        tasks.cancel_scope.cancel()
    _version, flags = parse_preface(reply[:8])
    assert flags & FLAG_AUTH
    assert len(reply) == 8 + _auth.NONCE_BYTES  # refused: nothing after the challenge
    assert CALLS == []


async def test_tcp_client_with_a_secret_refuses_a_server_without_one() -> None:
    server, client = make("tcp"), make("tcp", cluster_secret=SECRET)
    CALLS.clear()
    async with anyio.create_task_group() as tasks:
        address = await tasks.start(
            lambda task_status: server.serve(
                recording_handler, host="127.0.0.1", task_status=task_status
            )
        )
        with pytest.raises(ProtocolError, match="does not require a cluster secret"):
            await call(client, address)
        await client.aclose()
        tasks.cancel_scope.cancel()
    assert CALLS == []


def test_grpc_tokens_expire_and_bind_to_the_secret() -> None:
    secret = SECRET.encode()
    token = _auth.grpc_token(secret, now=1_000_000.0)
    assert _auth.grpc_token_valid(secret, token, now=1_000_030.0)
    assert not _auth.grpc_token_valid(secret, token, now=1_000_061.0)
    assert not _auth.grpc_token_valid(secret, token, now=999_939.0)
    assert not _auth.grpc_token_valid(b"other", token, now=1_000_000.0)
    stamp, nonce, mac = token.split(".")
    assert not _auth.grpc_token_valid(secret, f"{int(stamp) + 1}.{nonce}.{mac}", now=1e6)
    for junk in ("", "...", "x.y.z", "1.2", "１２.a.b", f"{stamp}.{nonce}.é"):
        assert not _auth.grpc_token_valid(secret, junk, now=1e6)


def test_secret_comes_from_the_option_before_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(_auth.ENV_CLUSTER_SECRET, "from-env")
    assert _auth.resolve_secret(None) == b"from-env"
    assert _auth.resolve_secret("opt") == b"opt"
    monkeypatch.setenv(_auth.ENV_CLUSTER_SECRET, "")
    assert _auth.resolve_secret(None) is None
