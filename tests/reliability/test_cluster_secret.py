"""The cluster secret: a tcp or grpc server with one refuses callers that cannot prove it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from dyn import plugins
from dyn.context import Context
from dyn.errors import ProtocolError
from dyn.settings import CLUSTER_SECRET_ENV
from dyn.transports import _auth
from dyn.transports._tcp_frames import FLAG_AUTH, encode_preface, encode_request, parse_preface
from dyn.transports.base import Transport
from dyn.transports.grpc import _client as grpc_client
from dyn.transports.grpc._token import (
    GRPC_MAX_SKEW_S,
    GRPC_METADATA_KEY,
    ReplayCache,
    TokenBusy,
    TokenChecker,
    TokenRefused,
    body_digest,
    make_token,
)
from dyn.transports.grpc._wire import CALL_METHOD, CallFrame, CallRequest, parse_address

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
    monkeypatch.setenv(CLUSTER_SECRET_ENV, SECRET)
    server = make(name)
    monkeypatch.delenv(CLUSTER_SECRET_ENV)
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


@pytest.fixture
async def grpc_secured() -> AsyncIterator[str]:
    """A grpc server holding SECRET, and its address."""
    server = make("grpc", cluster_secret=SECRET)
    CALLS.clear()
    async with anyio.create_task_group() as tasks:
        address = await tasks.start(
            lambda task_status: server.serve(
                recording_handler, host="127.0.0.1", task_status=task_status
            )
        )
        try:
            yield address
        finally:
            tasks.cancel_scope.cancel()


async def call_at(
    client: Transport, address: str, path: str, payload: bytes = b"hi"
) -> list[bytes]:
    with anyio.fail_after(10):
        async with client.call(address, path, payload, {}) as items:
            return [item async for item in items]


async def raw_grpc_call(address: str, request: CallRequest, metadata: dict[str, str]) -> None:
    """What an eavesdropper without the secret can do: send captured bytes, new connection."""
    host, port = parse_address(address)
    channel = Channel(host, port)
    try:
        with anyio.fail_after(10):
            async with channel.request(
                CALL_METHOD, Cardinality.UNARY_STREAM, CallRequest, CallFrame, metadata=metadata
            ) as stream:
                await stream.send_message(request, end=True)
                async for _ in stream:
                    pass
    finally:
        channel.close()


class TokenTap:
    """Wraps the grpc client's token maker: records what went on the wire, or forges it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = make_token  # the function the grpc client calls, before the patch
        self.sent: list[str] = []
        self.forced: str | None = None
        monkeypatch.setattr(grpc_client, "make_token", self)

    def __call__(self, secret: bytes, method: str, path: str, payload: bytes, now: float) -> str:
        token = self.forced or self.real(secret, method, path, payload, now)
        self.sent.append(token)
        return token


async def test_grpc_replayed_token_is_refused(
    grpc_secured: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    address, path = grpc_secured, "demo/x/generate/1"
    tap = TokenTap(monkeypatch)
    client = make("grpc", cluster_secret=SECRET)
    try:
        assert await call_at(client, address, path) == [b"ok:hi"]
        captured = tap.sent[-1]
        # An eavesdropper replays the call exactly as seen, on a connection of its own.
        request = CallRequest(path=path, headers={}, payload=b"hi", protocol_version=1)
        with pytest.raises(GRPCError) as refused:
            await raw_grpc_call(address, request, {GRPC_METADATA_KEY: captured})
        assert refused.value.status is Status.UNAUTHENTICATED
        assert "token already used" in (refused.value.message or "")
        # The same through dyn's client: a clear ProtocolError, not a crash.
        tap.forced = captured
        with pytest.raises(ProtocolError, match=r"cluster secret rejected.*already used"):
            await call_at(client, address, path)
        tap.forced = None
        assert await call_at(client, address, path) == [b"ok:hi"]  # the server is fine
    finally:
        await client.aclose()
    assert [path, path] == CALLS


async def test_grpc_token_for_one_call_is_refused_for_another(
    grpc_secured: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = grpc_secured
    tap = TokenTap(monkeypatch)
    client = make("grpc", cluster_secret=SECRET)
    secret, now = SECRET.encode(), time.time()
    try:
        # Fresh, never-used tokens, so only the binding can refuse them.
        tap.forced = make_token(secret, CALL_METHOD, "demo/x/generate/1", b"hi", now)
        with pytest.raises(ProtocolError, match=r"cluster secret rejected.*another call"):
            await call_at(client, address, "demo/x/admin/1")  # another endpoint
        tap.forced = make_token(secret, CALL_METHOD, "demo/x/generate/1", b"hi", now)
        with pytest.raises(ProtocolError, match=r"cluster secret rejected.*another call"):
            await call_at(client, address, "demo/x/generate/1", b"evil")  # another payload
        tap.forced = make_token(secret, "/dyn.v1.Endpoint/Other", "demo/x/generate/1", b"hi", now)
        with pytest.raises(ProtocolError, match=r"cluster secret rejected.*wrong secret"):
            await call_at(client, address, "demo/x/generate/1")  # another RPC method
        assert CALLS == []
        tap.forced = None
        assert await call_at(client, address, "demo/x/admin/1") == [b"ok:hi"]
    finally:
        await client.aclose()
    assert CALLS == ["demo/x/admin/1"]


@pytest.mark.parametrize("off", [-(GRPC_MAX_SKEW_S + 5), GRPC_MAX_SKEW_S + 5])
async def test_grpc_token_outside_the_clock_window_is_refused(
    grpc_secured: str, monkeypatch: pytest.MonkeyPatch, off: float
) -> None:
    address, path = grpc_secured, "demo/x/generate/1"
    tap = TokenTap(monkeypatch)
    client = make("grpc", cluster_secret=SECRET)
    try:
        tap.forced = make_token(SECRET.encode(), CALL_METHOD, path, b"hi", time.time() + off)
        with pytest.raises(ProtocolError, match=r"cluster secret rejected.*check the clocks"):
            await call_at(client, address, path)
        tap.forced = None
        assert await call_at(client, address, path) == [b"ok:hi"]
    finally:
        await client.aclose()
    assert [path] == CALLS


async def test_grpc_token_of_an_older_dyn_is_refused_clearly(grpc_secured: str) -> None:
    """The v1 token (``TIMESTAMP.NONCE.TAG``, bound to nothing) is no longer accepted."""
    stamp, nonce = str(int(time.time())), "ab" * 16
    v1 = (
        f"{stamp}.{nonce}."
        + _auth.tag(SECRET.encode(), b"dyn-grpc-call-v1", f"{stamp}.{nonce}".encode()).hex()
    )
    request = CallRequest(path="demo/x/generate/1", headers={}, payload=b"hi", protocol_version=1)
    with pytest.raises(GRPCError, match="older dyn") as refused:
        await raw_grpc_call(grpc_secured, request, {GRPC_METADATA_KEY: v1})
    assert refused.value.status is Status.UNAUTHENTICATED
    assert CALLS == []


async def test_grpc_legitimate_clients_are_served_many_calls_at_once(grpc_secured: str) -> None:
    address = grpc_secured
    clients = [make("grpc", cluster_secret=SECRET) for _ in range(2)]
    results: list[list[bytes]] = []

    async def one(client: Transport, i: int) -> None:
        results.append(await call_at(client, address, f"demo/x/generate/{i}", str(i).encode()))

    try:
        for _round in range(3):  # all at once, three times over the same connections
            async with anyio.create_task_group() as tasks:
                for i in range(300):
                    tasks.start_soon(one, clients[i % 2], i)
    finally:
        for client in clients:
            await client.aclose()
    assert sorted(results) == sorted([[b"ok:" + str(i).encode()] for i in range(300)] * 3)
    assert len(CALLS) == 900


def test_grpc_tokens_are_single_use_bound_and_expire() -> None:
    secret, method, now = SECRET.encode(), CALL_METHOD, 1_000_000.0
    checker = TokenChecker(secret, method)
    token = make_token(secret, method, "p", b"x", now)
    assert checker.admit(token, now + 29) == body_digest("p", b"x")
    with pytest.raises(TokenRefused, match="already used"):
        checker.admit(token, now + 29)
    assert body_digest("p", b"x") != body_digest("px", b"")  # the path's length is bound
    fresh = TokenChecker(secret, method)
    with pytest.raises(TokenRefused, match="check the clocks"):
        fresh.admit(token, now + GRPC_MAX_SKEW_S + 1)
    with pytest.raises(TokenRefused, match="check the clocks"):
        fresh.admit(token, now - GRPC_MAX_SKEW_S - 1)
    with pytest.raises(TokenRefused, match="wrong secret"):
        TokenChecker(b"other", method).admit(token, now)
    with pytest.raises(TokenRefused, match="wrong secret"):
        TokenChecker(secret, "/dyn.v1.Endpoint/Other").admit(token, now)
    version, stamp, nonce, digest, mac = token.split(".")
    for forged in (
        f"{version}.{int(stamp) + 1}.{nonce}.{digest}.{mac}",
        f"{version}.{stamp}.{nonce}.{body_digest('q', b'x').hex()}.{mac}",
        f"{version}.{stamp}.{'0' * 32}.{digest}.{mac}",
    ):
        with pytest.raises(TokenRefused, match="wrong secret"):
            fresh.admit(forged, now)
    for junk in (
        "",
        "....",
        "x.y.z",
        "v2.1.2.3.4",
        "v2.\uff11\uff12.a.b.c",  # fullwidth digits, which int() and str.isdigit accept
        f"v2.{stamp}.{nonce}.{digest}.é",
        f"{stamp}.{nonce}.{mac}",
    ):
        with pytest.raises(TokenRefused):
            fresh.admit(junk, now)
    assert len(fresh.cache) == 0  # nothing unproven is remembered


def test_replay_cache_forgets_only_what_the_clock_would_refuse() -> None:
    cache = ReplayCache(max_skew_s=30, capacity=1000)
    cache.add(100, "a", now=100)
    with pytest.raises(TokenRefused, match="already used"):
        cache.add(100, "a", now=130)  # still inside the window: remembered
    cache.add(101, "b", now=131)  # stamp 100 is now outside the window: dropped
    assert len(cache) == 1


def test_full_replay_cache_shrinks_the_window_instead_of_forgetting() -> None:
    cache = ReplayCache(max_skew_s=30, capacity=4)
    for i, stamp in enumerate([100, 100, 101, 102]):
        cache.add(stamp, f"n{i}", now=102)
    cache.add(102, "n4", now=102)  # full: the stamp-100 bucket goes, the floor rises
    assert cache.floor == 100
    assert len(cache) == 3
    with pytest.raises(TokenBusy):
        cache.add(100, "n0", now=102)  # a replay of a forgotten nonce is still refused
    with pytest.raises(TokenBusy):
        cache.add(100, "new", now=102)  # as is anything that old; a retry is fresh
    cache.add(103, "n5", now=103)
    cache.add(103, "n6", now=103)  # full again: 101 goes
    assert cache.floor == 101
    assert len(cache) == 4
    with pytest.raises(TokenRefused, match="already used"):
        cache.add(102, "n4", now=103)


def test_secret_comes_from_the_option_before_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(CLUSTER_SECRET_ENV, "from-env")
    assert _auth.resolve_secret(None) == b"from-env"
    assert _auth.resolve_secret("opt") == b"opt"
    monkeypatch.setenv(CLUSTER_SECRET_ENV, "")
    assert _auth.resolve_secret(None) is None
