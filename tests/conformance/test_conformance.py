"""One conformance suite, run against every transport: inproc, tcp, grpc and nats.

Each transport must give the same call semantics: streams in order, large payloads,
many concurrent streams, bounded buffering under a slow consumer, version checks,
cancellation and deadlines reaching the handler, typed errors, and no hang when the
server dies. Cancellation latencies are printed (`pytest -s`) for the closing notes.
``tcp+tls`` is the tcp transport with mutual TLS on (set through the environment, which
server processes started by the tests inherit); ``nats`` reaches a real nats-server the
same way, through ``DYN_NATS_SERVERS``.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import _handlers
import anyio
import anyio.to_thread
import pytest
from _certs import Certs
from _dyn_graph import free_port
from _nats_server import running_nats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dyn import plugins
from dyn.errors import (
    BadRequestError,
    DeadlineExceeded,
    ProtocolError,
    RemoteError,
    TransportError,
)
from dyn.settings import NATS_SERVERS_ENV
from dyn.transports.base import Transport

pytestmark = pytest.mark.anyio

TRANSPORTS = ["inproc", "tcp", "grpc", "tcp+tls", "nats"]
WIRE_TRANSPORTS = ["tcp", "grpc"]
HANDLERS_SCRIPT = Path(_handlers.__file__)


def make(name: str, **options: Any) -> Transport:
    # "+tls": the TLS files come from the environment, set by the transport_name fixture.
    transport: Transport = plugins.load("dyn.transports", name.removesuffix("+tls"))(**options)
    return transport


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One nats-server for the module's nats tests: servers share it as a cluster would."""
    with running_nats(tmp_path_factory.mktemp("nats")) as url:
        yield url


@pytest.fixture(params=TRANSPORTS)
def transport_name(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, certs: Certs
) -> str:
    name = str(request.param)
    if name == "nats":
        monkeypatch.setenv(NATS_SERVERS_ENV, request.getfixturevalue("nats_url"))
    if name.endswith("+tls"):
        # One member's files for both sides: any certificate the cluster CA signed will do.
        for variable, value in certs.server.env().items():
            monkeypatch.setenv(variable, value)
    return name


@pytest.fixture
async def served(transport_name: str) -> AsyncIterator[tuple[Transport, str]]:
    """A server running the conformance handler in this process, and a client transport."""
    server, client = make(transport_name), make(transport_name)
    async with anyio.create_task_group() as tasks:
        address = await tasks.start(
            lambda task_status: server.serve(
                _handlers.handler, host="127.0.0.1", task_status=task_status
            )
        )
        try:
            yield client, address
        finally:
            await client.aclose()
            tasks.cancel_scope.cancel()


async def collect(
    client: Transport,
    address: str,
    path: str,
    payload: bytes,
    headers: dict[str, str] | None = None,
    *,
    into: list[bytes] | None = None,
) -> list[bytes]:
    """The call's items; ``into`` keeps those that arrived before the call failed."""
    got = [] if into is None else into
    async with client.call(address, path, payload, headers or {}) as items:
        async for item in items:
            got.append(item)
    return got


async def test_unary(served: tuple[Transport, str]) -> None:
    client, address = served
    with anyio.fail_after(10):
        assert await collect(client, address, "echo", b"hello") == [b"hello"]


async def test_streaming_keeps_order(served: tuple[Transport, str]) -> None:
    client, address = served
    with anyio.fail_after(10):
        items = await collect(client, address, "count", b"1000")
    assert items == [str(i).encode() for i in range(1000)]


async def test_one_mebibyte_payload_both_ways(served: tuple[Transport, str]) -> None:
    client, address = served
    payload = bytes(range(256)) * 4096
    with anyio.fail_after(10):
        assert await collect(client, address, "echo", payload) == [payload]


async def test_a_thousand_concurrent_streams(served: tuple[Transport, str]) -> None:
    client, address = served
    results: dict[int, list[bytes]] = {}

    async def one(i: int) -> None:
        results[i] = await collect(client, address, "count", b"5")

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tasks:
            for i in range(1000):
                tasks.start_soon(one, i)
    assert len(results) == 1000
    assert all(items == [b"0", b"1", b"2", b"3", b"4"] for items in results.values())


async def test_slow_consumer_bounds_what_the_sender_buffers(
    served: tuple[Transport, str], transport_name: str
) -> None:
    client, address = served
    key = f"flood-{transport_name}"
    with anyio.fail_after(10):
        async with client.call(address, "flood", key.encode(), {}) as items:
            await items.__anext__()
            await anyio.sleep(1.0)  # the consumer stalls; the producer must stall too
            produced = _handlers.produced[key]
    # The handler offers 256 MiB; flow control must stop it after a few windows.
    print(f"\n{transport_name}: {produced / 2**20:.2f} MiB produced while the consumer stalled")
    assert produced <= 4 * 2**20


async def test_version_mismatch_is_a_clear_error(
    served: tuple[Transport, str], transport_name: str
) -> None:
    _, address = served
    other = make(transport_name, protocol_version=99)
    try:
        with anyio.fail_after(10), pytest.raises(ProtocolError) as caught:
            await collect(other, address, "echo", b"x")
    finally:
        await other.aclose()
    message = str(caught.value)
    # Both versions are named: 99 here, and the server's own (1), not as part of an address.
    assert "version" in message
    assert re.search(r"\b99\b", message)
    assert re.search(r"(?<![\d.:])1(?![\d.:])", message), message


async def test_cancel_mid_stream_reaches_the_handler(
    served: tuple[Transport, str], transport_name: str
) -> None:
    client, address = served
    key = f"cancel-{transport_name}"
    with anyio.fail_after(10):
        async with client.call(address, "forever", key.encode(), {}) as items:
            for _ in range(3):
                await items.__anext__()
            closed_at = time.perf_counter()
        with anyio.fail_after(1.0):  # generous; the note reports the measured latency
            seen_at = await _handlers.wait_cancelled(key)
    latency_ms = (seen_at - closed_at) * 1000
    print(f"\n{transport_name}: cancellation reached the handler in {latency_ms:.2f} ms")


async def test_handler_errors_arrive_typed(served: tuple[Transport, str]) -> None:
    client, address = served
    got: list[bytes] = []
    with anyio.fail_after(10):
        with pytest.raises(BadRequestError, match="the payload was not what I expected"):
            await collect(client, address, "bad-request", b"", into=got)
        assert got == [b"first"]
        with pytest.raises(RemoteError, match="ValueError: something broke inside"):
            await collect(client, address, "bug", b"")


async def test_passed_deadline_stops_both_sides(
    served: tuple[Transport, str], transport_name: str
) -> None:
    client, address = served
    key = f"deadline-{transport_name}"
    started = time.perf_counter()
    with anyio.fail_after(10):
        with pytest.raises(DeadlineExceeded):
            await collect(client, address, "sleep", key.encode(), {"dyn-timeout": "0.3"})
        assert time.perf_counter() - started < 5
        await _handlers.wait_cancelled(key)


# -- a server in its own process: killed, restarted, fed garbage ------------------------


class ServerProcess:
    def __init__(self, transport_name: str, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HANDLERS_SCRIPT), transport_name.removesuffix("+tls"), str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.address = self.proc.stdout.readline().strip()
        assert self.address, "the server process printed no address"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def server_process(transport_name: str) -> Iterator[ServerProcess]:
    if transport_name == "inproc":
        pytest.skip("inproc servers live in the caller's process; see test_runtime.py")
    server = ServerProcess(transport_name, free_port())
    yield server
    server.kill()


async def test_server_killed_mid_stream_fails_fast(
    server_process: ServerProcess, transport_name: str
) -> None:
    client = make(transport_name)
    try:
        with anyio.fail_after(15):
            async with client.call(server_process.address, "forever", b"k", {}) as items:
                await items.__anext__()
                server_process.kill()
                with pytest.raises(TransportError):
                    async for _ in items:
                        pass
    finally:
        await client.aclose()


async def test_client_reconnects_to_a_restarted_server(
    server_process: ServerProcess, transport_name: str
) -> None:
    client = make(transport_name)
    port = int(server_process.address.rsplit(":", 1)[1])
    try:
        with anyio.fail_after(30):
            assert await collect(client, server_process.address, "echo", b"a") == [b"a"]
            server_process.kill()
            with pytest.raises(TransportError):
                await collect(client, server_process.address, "echo", b"b")
            restarted = ServerProcess(transport_name, port)
            try:
                assert restarted.address == server_process.address
                assert await collect(client, restarted.address, "echo", b"c") == [b"c"]
            finally:
                restarted.kill()
    finally:
        await client.aclose()


# A valid opening, so that the garbage reaches the frame parser instead of failing the
# handshake at its first byte.
PREFACES = {"tcp": b"DYN\x00\x00\x01\x00\x00", "grpc": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"}


def _connection_closed_after(port: int, garbage: bytes) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(garbage)
        try:
            raw.shutdown(socket.SHUT_WR)
        except OSError:
            return True
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if raw.recv(65536) == b"":
                    return True
            except (ConnectionResetError, BrokenPipeError):
                return True
            except TimeoutError:
                return False
    return False


@pytest.mark.parametrize("wire", WIRE_TRANSPORTS)
def test_malformed_bytes_close_only_that_connection(wire: str) -> None:
    server = ServerProcess(wire, free_port())
    port = int(server.address.rsplit(":", 1)[1])

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(garbage=st.binary(min_size=1, max_size=512))
    def feed(garbage: bytes) -> None:
        assert _connection_closed_after(port, PREFACES[wire] + garbage)

    async def bystander_survives() -> list[bytes]:
        # A stream on a healthy connection, open while the garbage arrives, must go on.
        client = make(wire)
        try:
            with anyio.fail_after(60):
                async with client.call(server.address, "count", b"3", {}) as items:
                    first = await items.__anext__()
                    await anyio.to_thread.run_sync(feed)
                    rest = [item async for item in items]
                # ... and the same connection still takes new calls.
                assert await collect(client, server.address, "echo", b"ok") == [b"ok"]
                return [first, *rest]
        finally:
            await client.aclose()

    try:
        assert anyio.run(bystander_survives) == [b"0", b"1", b"2"]
        assert server.proc.poll() is None
    finally:
        server.kill()
