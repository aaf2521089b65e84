"""The grpc transport over loopback: a real grpclib server, a tiny handler, real sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from dyn.context import Context
from dyn.contracts.base import Text
from dyn.contracts.demo import HELLO_GENERATE, HelloRequest
from dyn.discovery.memory import MemoryDiscovery
from dyn.errors import (
    BadRequestError,
    DeadlineExceeded,
    ProtocolError,
    RemoteError,
    TransportError,
)
from dyn.roles.hello import Backend, BackendConfig, Middle, MiddleConfig
from dyn.runtime.runtime import Runtime, component_info
from dyn.transports.base import Handler
from dyn.transports.grpc import GrpcTransport

pytestmark = pytest.mark.anyio

CHUNK = 64 * 1024


class Probe:
    """What the handler saw, shared with the test."""

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.stopped = anyio.Event()
        self.stopped_at = 0.0
        self.saw_cancel = False
        self.produced = 0
        self.running = 0
        self.peak = 0
        self.all_in = anyio.Event()
        self.ctx: Context | None = None


def make_handler(probe: Probe, *, expected: int = 0) -> Handler:
    async def handler(path: str, payload: bytes, ctx: Context) -> AsyncIterator[bytes]:
        probe.ctx = ctx
        if path == "echo":
            yield payload
        elif path == "count":
            for i in range(int(payload)):
                yield str(i).encode()
        elif path == "together":
            # Every call waits until `expected` calls run at once: proves true concurrency.
            probe.running += 1
            probe.peak = max(probe.peak, probe.running)
            if probe.running >= expected:
                probe.all_in.set()
            await probe.all_in.wait()
            probe.running -= 1
            yield b"a"
            yield b"b"
        elif path == "flood":
            chunk = b"x" * CHUNK
            for _ in range(256 * 2**20 // CHUNK):
                yield chunk
                probe.produced += CHUNK
        elif path == "forever":
            probe.started.set()
            try:
                while True:
                    yield b"tick"
                    await anyio.sleep(0.005)
            finally:
                probe.saw_cancel = ctx.cancelled
                probe.stopped_at = time.perf_counter()
                probe.stopped.set()
        elif path == "bad":
            yield b"first"
            raise BadRequestError("field 'text' is missing")
        elif path == "bug":
            raise ValueError("something broke inside")
        else:
            raise BadRequestError(f"no test path {path!r}")

    return handler


@asynccontextmanager
async def serving(
    probe: Probe, *, port: int = 0, expected: int = 0, transport: GrpcTransport | None = None
) -> AsyncIterator[str]:
    server = transport or GrpcTransport()
    handler = make_handler(probe, expected=expected)
    async with anyio.create_task_group() as tasks:
        address: str = await tasks.start(
            lambda task_status: server.serve(
                handler, host="127.0.0.1", port=port, task_status=task_status
            )
        )
        try:
            yield address
        finally:
            tasks.cancel_scope.cancel()


@pytest.fixture
async def client() -> AsyncIterator[GrpcTransport]:
    transport = GrpcTransport()
    try:
        yield transport
    finally:
        await transport.aclose()


async def collect(
    client: GrpcTransport,
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


async def test_unary_and_streaming(client: GrpcTransport) -> None:
    probe = Probe()
    with anyio.fail_after(10):
        async with serving(probe) as address:
            assert address.startswith("grpc://127.0.0.1:")
            assert await collect(client, address, "echo", b"hi") == [b"hi"]
            assert await collect(client, address, "echo", b"") == [b""]
            got = await collect(client, address, "count", b"500")
            assert got == [str(i).encode() for i in range(500)]


async def test_headers_reach_the_handler(client: GrpcTransport) -> None:
    probe = Probe()
    with anyio.fail_after(10):
        async with serving(probe) as address:
            headers = {"x-request-id": "req-7", "dyn-timeout": "30", "custom": "v"}
            async with client.call(address, "echo", b"", headers) as items:
                await items.__anext__()
    assert probe.ctx is not None
    assert probe.ctx.request_id == "req-7"
    assert 0 < probe.ctx.remaining() <= 30
    assert probe.ctx.headers["custom"] == "v"


async def test_one_mebibyte_payload(client: GrpcTransport) -> None:
    payload = os.urandom(2**20)
    with anyio.fail_after(10):
        async with serving(Probe()) as address:
            assert await collect(client, address, "echo", payload) == [payload]


async def test_a_thousand_concurrent_streams_on_one_connection(client: GrpcTransport) -> None:
    probe = Probe()
    results: list[list[bytes]] = []

    async def one(address: str) -> None:
        results.append(await collect(client, address, "together", b""))

    with anyio.fail_after(60):
        async with (
            serving(probe, expected=1000) as address,
            anyio.create_task_group() as tasks,
        ):
            for _ in range(1000):
                tasks.start_soon(one, address)
    # All 1000 ran at once (past h2's default limit of 100 streams per connection),
    # over the one pooled channel.
    assert probe.peak == 1000
    assert len(client._channels) == 1
    assert results == [[b"a", b"b"]] * 1000


async def test_slow_consumer_bounds_what_the_handler_produces(client: GrpcTransport) -> None:
    probe = Probe()
    with anyio.fail_after(10):
        async with (
            serving(probe) as address,
            client.call(address, "flood", b"", {}) as items,
        ):
            await items.__anext__()
            await anyio.sleep(1.0)
            produced = probe.produced
    print(f"\ngrpc: {produced / 2**20:.2f} MiB of 256 MiB produced while the consumer stalled")
    assert produced <= 16 * 2**20


async def test_closing_a_fast_stream_early_is_cheap(client: GrpcTransport) -> None:
    # A handler that never awaits must neither starve the loop nor leave a window's worth
    # of frames to churn through after the caller has gone.
    with anyio.fail_after(10):
        async with serving(Probe()) as address:
            for reads in range(1, 20):
                with anyio.fail_after(1):
                    async with client.call(address, "count", b"10000000", {}) as items:
                        for _ in range(reads):
                            await items.__anext__()
                    assert await collect(client, address, "echo", b"next") == [b"next"]


async def test_version_mismatch_names_both_versions() -> None:
    other = GrpcTransport(protocol_version=7)
    try:
        with anyio.fail_after(10):
            async with serving(Probe()) as address:
                with pytest.raises(ProtocolError) as caught:
                    await collect(other, address, "echo", b"x")
    finally:
        await other.aclose()
    assert str(caught.value) == (
        f"server at {address} speaks dyn protocol version 1, this client speaks 7"
    )


@pytest.mark.parametrize("how", ["aclose", "task_cancelled"])
async def test_cancel_mid_stream_reaches_the_handler(client: GrpcTransport, how: str) -> None:
    probe = Probe()
    with anyio.fail_after(10):
        async with serving(probe) as address:
            if how == "aclose":
                async with client.call(address, "forever", b"", {}) as items:
                    for _ in range(3):
                        await items.__anext__()
                    closed_at = time.perf_counter()
            else:
                # The consuming task is cancelled while it waits: close_nowait path.
                with anyio.move_on_after(0.1):
                    async for _ in client.call(address, "forever", b"", {}):
                        pass
                closed_at = time.perf_counter()
            with anyio.fail_after(1.0):
                await probe.stopped.wait()
    latency_ms = (probe.stopped_at - closed_at) * 1000
    print(f"\ngrpc ({how}): cancellation reached the handler in {latency_ms:.2f} ms")
    assert probe.saw_cancel


async def test_handler_errors_arrive_typed(client: GrpcTransport) -> None:
    got: list[bytes] = []
    with anyio.fail_after(10):
        async with serving(Probe()) as address:
            with pytest.raises(BadRequestError, match="field 'text' is missing"):
                await collect(client, address, "bad", b"", into=got)
            with pytest.raises(RemoteError, match="ValueError: something broke inside"):
                await collect(client, address, "bug", b"")
            # the connection is still good after errors
            assert await collect(client, address, "echo", b"ok") == [b"ok"]
    assert got == [b"first"]


async def test_passed_deadline_stops_both_sides(client: GrpcTransport) -> None:
    probe = Probe()
    started = time.perf_counter()
    with anyio.fail_after(10):
        async with serving(probe) as address:
            with pytest.raises(DeadlineExceeded):
                await collect(client, address, "forever", b"", {"dyn-timeout": "0.2"})
            await probe.stopped.wait()
    assert time.perf_counter() - started < 2
    assert probe.saw_cancel


def _closed_by_peer(port: int, garbage: bytes) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(garbage)
        try:
            while chunk := raw.recv(65536):
                del chunk  # the server may answer with its settings or a GOAWAY first
        except ConnectionResetError:
            pass
        return True


async def test_garbage_closes_only_that_connection(client: GrpcTransport) -> None:
    with anyio.fail_after(20):
        async with serving(Probe()) as address:
            port = int(address.rsplit(":", 1)[1])
            assert await collect(client, address, "echo", b"before") == [b"before"]
            for size in (1, 24, 100, 4096):
                garbage = os.urandom(size)
                assert await anyio.to_thread.run_sync(_closed_by_peer, port, garbage)
            # the pooled connection opened before the garbage still works, and so do new ones
            assert await collect(client, address, "echo", b"after") == [b"after"]
            fresh = GrpcTransport()
            try:
                assert await collect(fresh, address, "echo", b"new") == [b"new"]
            finally:
                await fresh.aclose()


async def test_server_stopping_mid_stream_is_a_transport_error(client: GrpcTransport) -> None:
    probe = Probe()
    with anyio.fail_after(10):
        async with serving(probe) as address:
            items = client.call(address, "forever", b"", {})
            await items.__anext__()
        # The server is gone: the stream fails instead of waiting for more frames.
        with pytest.raises(TransportError):
            async for _ in items:
                pass
        assert probe.saw_cancel
        # grpclib cancelled this task to wake it up; that request must not stay counted
        # against the task, where later cancel scopes would trip over it.
        current = asyncio.current_task()
        assert current is not None
        assert current.cancelling() == 0
        with anyio.move_on_after(0.01):
            await anyio.sleep(1)


async def test_client_reconnects_to_a_restarted_server(client: GrpcTransport) -> None:
    with anyio.fail_after(20):
        async with serving(Probe()) as address:
            port = int(address.rsplit(":", 1)[1])
            assert await collect(client, address, "echo", b"a") == [b"a"]
        with pytest.raises(TransportError, match="connection to"):
            await collect(client, address, "echo", b"b")
        async with serving(Probe(), port=port) as again:
            assert again == address
            assert await collect(client, address, "echo", b"c") == [b"c"]
    assert len(client._channels) == 1


async def test_bad_addresses_are_transport_errors(client: GrpcTransport) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    with anyio.fail_after(10):
        with pytest.raises(TransportError, match="connection to"):
            await collect(client, f"grpc://127.0.0.1:{port}", "echo", b"")
        with pytest.raises(ProtocolError, match="expected grpc://HOST:PORT"):
            await collect(client, "tcp://127.0.0.1:1", "echo", b"")


async def test_hello_pipeline_through_the_runtime() -> None:
    discovery = MemoryDiscovery()
    with anyio.fail_after(20):
        async with (
            Runtime(namespace="t", transport=GrpcTransport(), discovery=discovery) as back_rt,
            Runtime(namespace="t", transport=GrpcTransport(), discovery=discovery) as mid_rt,
            Runtime(namespace="t", transport=GrpcTransport(), discovery=discovery) as caller,
        ):
            assert back_rt.address.startswith("grpc://")
            backend = Backend(BackendConfig(), component_info("t", "backend"), {})
            await back_rt.serve_component(backend)
            middle = Middle(
                MiddleConfig(), component_info("t", "middle"), {"backend": mid_rt.client("backend")}
            )
            await mid_rt.serve_component(middle)
            await middle.backend.wait_for_instances()
            client = caller.client("middle")
            await client.wait_for_instances()
            async with client.stream(HELLO_GENERATE, HelloRequest("hello world")) as items:
                got = [item async for item in items]
            assert got == [Text("Middle: Backend: hello"), Text("Middle: Backend: world-mid-back")]
            with pytest.raises(
                BadRequestError, match="generate: Object missing required field `text`"
            ):
                async with client.stream("generate", {"txt": 1}) as items:
                    [item async for item in items]
