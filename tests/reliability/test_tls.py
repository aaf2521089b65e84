"""Mutual TLS on the tcp and grpc transports: members talk, everyone else is refused.

Certificates come from the session's ``certs`` fixture (trustme): ``server`` and
``client`` are signed by the cluster CA; ``stranger`` and ``impostor`` by another one.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from _certs import Certs

from dyn import plugins
from dyn.context import Context
from dyn.errors import ConfigError, ProtocolError, TransportError
from dyn.settings import TLS_CA_ENV, TLS_CERT_ENV, TLS_KEY_ENV
from dyn.transports._tcp_client import ClientConnection
from dyn.transports.base import PROTOCOL_VERSION, Transport
from dyn.transports.grpc._client import GrpcCall, PooledChannel
from dyn.transports.grpc._wire import CallRequest

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

WIRES = ["tcp", "grpc"]
CALLS: list[str] = []


async def counting_handler(path: str, payload: bytes, ctx: Context) -> AsyncIterator[bytes]:
    CALLS.append(path)
    for i in range(int(payload)):
        yield str(i).encode()


def make(name: str, **options: Any) -> Transport:
    transport: Transport = plugins.load("dyn.transports", name)(**options)
    return transport


async def call(client: Transport, address: str, items: int = 3) -> list[bytes]:
    with anyio.fail_after(10):
        async with client.call(address, "count", str(items).encode(), {}) as stream:
            return [item async for item in stream]


def expected(items: int) -> list[bytes]:
    return [str(i).encode() for i in range(items)]


@pytest.fixture
async def serving(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """Start servers in a task group: ``await serving(transport)`` gives the address."""
    CALLS.clear()
    async with anyio.create_task_group() as tasks:

        async def start(server: Transport) -> str:
            address: str = await tasks.start(
                lambda task_status: server.serve(
                    counting_handler, host="127.0.0.1", task_status=task_status
                )
            )
            return address

        yield start
        tasks.cancel_scope.cancel()


@pytest.mark.parametrize("name", WIRES)
async def test_a_stream_over_tls_with_the_files_from_the_environment(
    name: str, certs: Certs, serving: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in certs.server.env().items():
        monkeypatch.setenv(variable, value)
    address = await serving(make(name))
    for variable, value in certs.client.env().items():
        monkeypatch.setenv(variable, value)
    client = make(name)
    try:
        async with anyio.create_task_group() as tasks:  # a long stream beside short calls
            tasks.start_soon(call, client, address, 2000)
            for _ in range(5):
                assert await call(client, address) == expected(3)
        assert await call(client, address, 2000) == expected(2000)
    finally:
        await client.aclose()


@pytest.mark.parametrize("name", WIRES)
@pytest.mark.parametrize(
    ("who", "refusal"),
    [
        # Signed by another CA: the server refuses the client's certificate...
        ("impostor", "(does not trust|closed the connection|connection .* failed)"),
        # ... and a client refuses a server its CA did not sign.
        ("stranger", "certificate is not trusted"),
    ],
)
async def test_peers_from_another_ca_are_refused(
    name: str, who: str, refusal: str, certs: Certs, serving: Any
) -> None:
    address = await serving(make(name, **certs.server.options()))
    outsider = make(name, **getattr(certs, who).options())
    member = make(name, **certs.client.options())
    try:
        for _ in range(2):  # and again on a fresh connection
            with pytest.raises(TransportError, match=refusal) as caught:
                await call(outsider, address)
            assert TLS_CA_ENV in str(caught.value)  # the message says what to check
        assert CALLS == []
        assert await call(member, address) == expected(3)  # the server is unharmed
    finally:
        await outsider.aclose()
        await member.aclose()


async def _call_without_a_certificate(name: str, address: str, certs: Certs) -> None:
    """One call to ``address`` by a client that trusts the CA but has no certificate."""
    host, port = address.rsplit("//", 1)[1].rsplit(":", 1)
    if name == "tcp":
        conn = ClientConnection(address, host, int(port), 2**20)
        await conn.open(PROTOCOL_VERSION, 5, None, _context_without_a_certificate(certs, None))
    else:
        channel = PooledChannel(host, int(port), ssl=_context_without_a_certificate(certs, ["h2"]))
        request = CallRequest(path="count", payload=b"3", protocol_version=PROTOCOL_VERSION)
        try:
            async with GrpcCall(address, request, lambda _: channel, None, True) as stream:
                [item async for item in stream]
        finally:
            channel.close()


def _context_without_a_certificate(certs: Certs, alpn: list[str] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.client.ca))
    context.check_hostname = False
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


@pytest.mark.parametrize("name", WIRES)
async def test_a_client_without_a_certificate_is_refused(
    name: str, certs: Certs, serving: Any
) -> None:
    # dyn's own clients cannot be configured so (a CA alone is a ConfigError), so this
    # drives the client internals with a context holding only the CA.
    address = await serving(make(name, **certs.server.options()))
    with anyio.fail_after(10), pytest.raises(TransportError) as caught:
        await _call_without_a_certificate(name, address, certs)
    if name == "tcp":  # the server's refusal arrives as a TLS alert
        assert "requires a certificate and this side sent none" in str(caught.value)
    assert CALLS == []
    member = make(name, **certs.client.options())
    try:
        assert await call(member, address) == expected(3)
    finally:
        await member.aclose()


@pytest.mark.parametrize("name", WIRES)
async def test_plain_and_tls_peers_fail_clearly_and_harm_nobody(
    name: str, certs: Certs, serving: Any
) -> None:
    tls_address = await serving(make(name, **certs.server.options()))
    plain_address = await serving(make(name))
    plain, tls = make(name), make(name, **certs.client.options())
    try:
        # A member mid-stream on each server while the mismatched calls fail.
        async with (
            tls.call(tls_address, "count", b"50", {}) as on_tls,
            plain.call(plain_address, "count", b"50", {}) as on_plain,
        ):
            first = [await on_tls.__anext__(), await on_plain.__anext__()]
            with pytest.raises(TransportError, match=f"set {TLS_CERT_ENV}, {TLS_KEY_ENV}"):
                await call(plain, tls_address)
            with pytest.raises(TransportError, match="this client uses TLS"):
                await call(tls, plain_address)
            rest = [[item async for item in on_tls], [item async for item in on_plain]]
        assert first == [b"0", b"0"]
        assert rest == [expected(50)[1:], expected(50)[1:]]
        assert await call(plain, plain_address) == expected(3)
        assert await call(tls, tls_address) == expected(3)
    finally:
        await plain.aclose()
        await tls.aclose()


@pytest.mark.parametrize("name", WIRES)
async def test_tls_and_the_cluster_secret_together(name: str, certs: Certs, serving: Any) -> None:
    address = await serving(make(name, cluster_secret="s3cret", **certs.server.options()))
    member = make(name, cluster_secret="s3cret", **certs.client.options())
    wrong = make(name, cluster_secret="guess", **certs.client.options())
    try:
        assert await call(member, address) == expected(3)
        with pytest.raises(ProtocolError, match="cluster secret rejected"):
            await call(wrong, address)
    finally:
        await member.aclose()
        await wrong.aclose()
    assert len(CALLS) == 1


@pytest.mark.parametrize("name", WIRES)
def test_partial_or_bad_configuration_fails_at_start_naming_the_variable(
    name: str, certs: Certs, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    files = certs.server.env()
    monkeypatch.setenv(TLS_CERT_ENV, files[TLS_CERT_ENV])
    with pytest.raises(ConfigError, match=f"{TLS_CERT_ENV} is set but {TLS_KEY_ENV} and"):
        make(name)
    monkeypatch.setenv(TLS_KEY_ENV, files[TLS_KEY_ENV])
    with pytest.raises(ConfigError, match=f"but {TLS_CA_ENV} is not; set it"):
        make(name)
    monkeypatch.setenv(TLS_CA_ENV, str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match=f"{TLS_CA_ENV}=.*missing.pem: cannot read it"):
        make(name)
    monkeypatch.setenv(TLS_CA_ENV, files[TLS_CA_ENV])
    monkeypatch.setenv(TLS_KEY_ENV, str(certs.client.key))  # another certificate's key
    with pytest.raises(ConfigError, match=f"{TLS_KEY_ENV}=.*the key must be the certificate's"):
        make(name)
    monkeypatch.setenv(TLS_KEY_ENV, "")  # empty counts as unset, as with the secret
    with pytest.raises(ConfigError, match=f"{TLS_KEY_ENV} is not"):
        make(name)
    for variable in files:
        monkeypatch.setenv(variable, "")
    make(name)  # none: plain TCP
