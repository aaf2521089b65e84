"""The tcp transport over loopback: calls, flow control, cancellation, errors, failures."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup

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
from dyn.transports import _tcp_frames as f
from dyn.transports.tcp import TcpTransport, parse_address

pytestmark = pytest.mark.anyio

CHUNK = 64 * 1024


class Seen:
    """What the handler observed, for the tests to assert on."""

    def __init__(self) -> None:
        self.produced = 0
        self.started = anyio.Event()
        self.stopped = anyio.Event()
        self.stopped_at = 0.0
        self.ctx_cancelled = False


async def handler(path: str, payload: bytes, ctx: Context) -> AsyncIterator[bytes]:
    if path == "echo":
        yield payload
    elif path == "big":
        yield b"x" * int(payload)
    elif path == "count":
        for i in range(int(payload)):
            yield str(i).encode()
    elif path == "flood":
        seen = SEEN["flood"]
        chunk = b"x" * CHUNK
        for _ in range(4096):  # 256 MiB if nothing held it back
            yield chunk
            seen.produced += CHUNK
    elif path in ("forever", "sleep"):
        seen = SEEN[payload.decode()]
        seen.started.set()
        try:
            if path == "sleep":
                await anyio.sleep(30)
            while True:
                yield b"tick"
                await anyio.sleep(0.005)
        finally:
            seen.ctx_cancelled = ctx.cancelled
            seen.stopped_at = time.perf_counter()
            seen.stopped.set()
    elif path == "bad-request":
        yield b"first"
        raise BadRequestError("the payload was not what I expected")
    elif path == "bug":
        raise ValueError("something broke inside")
    else:
        raise BadRequestError(f"no such test path {path!r}")


SEEN: dict[str, Seen] = {}


async def start_server(
    tasks: TaskGroup, transport: TcpTransport | None = None, port: int = 0
) -> str:
    server = transport or TcpTransport()
    address: str = await tasks.start(
        lambda task_status: server.serve(
            handler, host="127.0.0.1", port=port, task_status=task_status
        )
    )
    return address


@pytest.fixture
async def served() -> AsyncIterator[tuple[TcpTransport, str]]:
    client = TcpTransport()
    async with anyio.create_task_group() as tasks:
        address = await start_server(tasks)
        try:
            yield client, address
        finally:
            await client.aclose()
            tasks.cancel_scope.cancel()


async def collect(
    client: TcpTransport,
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


async def test_unary_and_streaming(served: tuple[TcpTransport, str]) -> None:
    client, address = served
    assert address.startswith("tcp://127.0.0.1:")
    with anyio.fail_after(10):
        assert await collect(client, address, "echo", b"hello") == [b"hello"]
        assert await collect(client, address, "echo", b"") == [b""]
        items = await collect(client, address, "count", b"1000")
    assert items == [str(i).encode() for i in range(1000)]
    assert client.connections_opened == 1


async def test_has_ready_says_whether_the_next_frame_is_here(
    served: tuple[TcpTransport, str],
) -> None:
    """The batching hint: true while items that arrived are unread, false at the end."""
    client, address = served
    with anyio.fail_after(10):
        async with client.call(address, "count", b"3", {}) as items:
            assert not items.has_ready()  # not even sent yet
            assert await anext(items) == b"0"
            # The handler's three items and END leave in one write: wait for the rest.
            while not items.has_ready():  # noqa: ASYNC110
                await anyio.sleep(0.005)
            assert await anext(items) == b"1"
            assert items.has_ready()
            assert await anext(items) == b"2"
            assert not items.has_ready()
            assert await anext(items, None) is None


async def test_one_mebibyte_payload_both_ways(served: tuple[TcpTransport, str]) -> None:
    client, address = served
    payload = bytes(range(256)) * 4096
    with anyio.fail_after(10):
        assert await collect(client, address, "echo", payload) == [payload]


async def test_a_thousand_concurrent_streams_share_one_connection(
    served: tuple[TcpTransport, str],
) -> None:
    client, address = served
    results: dict[int, list[bytes]] = {}

    async def one(i: int) -> None:
        results[i] = await collect(client, address, "count", b"5")

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            for i in range(1000):
                tasks.start_soon(one, i)
    assert len(results) == 1000
    assert all(items == [b"0", b"1", b"2", b"3", b"4"] for items in results.values())
    assert client.connections_opened == 1


async def test_a_slow_consumer_stalls_the_handler(served: tuple[TcpTransport, str]) -> None:
    client, address = served
    SEEN["flood"] = seen = Seen()
    with anyio.fail_after(10):
        async with client.call(address, "flood", b"", {}) as items:
            await items.__anext__()
            await anyio.sleep(1.0)  # the consumer stalls; the producer must stall too
            produced = seen.produced
            # the others on the connection are not held up by the stalled stream
            assert await collect(client, address, "echo", b"ok") == [b"ok"]
    print(f"\ntcp: {produced / 2**20:.2f} MiB produced while the consumer stalled")
    assert produced <= 2 * 2**20


async def test_version_mismatch_names_both_versions(served: tuple[TcpTransport, str]) -> None:
    _, address = served
    other = TcpTransport(protocol_version=99)
    try:
        with anyio.fail_after(10), pytest.raises(ProtocolError) as caught:
            await collect(other, address, "echo", b"x")
    finally:
        await other.aclose()
    host_port = address.removeprefix("tcp://")
    assert str(caught.value) == (
        f"server at {host_port} speaks dyn tcp protocol version 1, this client speaks 99"
    )


async def test_cancel_mid_stream_stops_the_handler(served: tuple[TcpTransport, str]) -> None:
    client, address = served
    SEEN["cancel"] = seen = Seen()
    with anyio.fail_after(10):
        async with client.call(address, "forever", b"cancel", {}) as items:
            for _ in range(3):
                await items.__anext__()
            closed_at = time.perf_counter()
        with anyio.fail_after(1.0):
            await seen.stopped.wait()
    print(
        f"\ntcp: cancellation reached the handler in {(seen.stopped_at - closed_at) * 1e3:.2f} ms"
    )
    assert seen.ctx_cancelled


async def test_close_nowait_from_a_cancelled_task_stops_the_handler(
    served: tuple[TcpTransport, str],
) -> None:
    client, address = served
    SEEN["cancel2"] = seen = Seen()
    items = client.call(address, "sleep", b"cancel2", {})
    with anyio.fail_after(10):
        with anyio.move_on_after(0.2):
            await items.__anext__()  # cancelled while waiting: closes the call itself
        await seen.stopped.wait()
    assert seen.ctx_cancelled
    with pytest.raises(StopAsyncIteration):
        await items.__anext__()


async def test_handler_errors_arrive_typed(served: tuple[TcpTransport, str]) -> None:
    client, address = served
    got: list[bytes] = []
    with anyio.fail_after(10):
        with pytest.raises(BadRequestError, match="the payload was not what I expected"):
            await collect(client, address, "bad-request", b"", into=got)
        assert got == [b"first"]
        with pytest.raises(RemoteError, match="ValueError: something broke inside"):
            await collect(client, address, "bug", b"")


async def test_a_passed_deadline_stops_both_sides(served: tuple[TcpTransport, str]) -> None:
    client, address = served
    SEEN["deadline"] = seen = Seen()
    started = time.perf_counter()
    with anyio.fail_after(10):
        with pytest.raises(DeadlineExceeded, match="deadline passed"):
            await collect(client, address, "sleep", b"deadline", {"dyn-timeout": "0.3"})
        await seen.stopped.wait()
    assert 0.25 < time.perf_counter() - started < 5
    assert seen.ctx_cancelled


async def test_connect_refused_is_a_transport_error_naming_the_address() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens once it is closed
    client = TcpTransport()
    with anyio.fail_after(10), pytest.raises(TransportError, match=f"127.0.0.1:{port}"):
        await collect(client, f"tcp://127.0.0.1:{port}", "echo", b"x")
    await client.aclose()


def test_bad_address_and_options_are_rejected() -> None:
    assert parse_address("tcp://[::1]:80") == ("::1", 80)
    with pytest.raises(TransportError, match="expected tcp://HOST:PORT"):
        parse_address("tcp://nowhere")
    with pytest.raises(ValueError, match="stream_window_bytes"):
        TcpTransport(stream_window_bytes=0)


# -- failures: garbage, a dying server, a restarted one ------------------------------------


async def _closed_by_server(address: str, garbage: bytes) -> bool:
    host, port = parse_address(address)
    async with await anyio.connect_tcp(host, port) as raw:
        await raw.send(garbage)
        with anyio.fail_after(5):
            try:
                while await raw.receive():
                    pass  # a preface, perhaps, before the close
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                return True
    return False


PREFACE = f.encode_preface(1)
GARBAGE = {
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "unknown type": PREFACE + f.encode_frame(9, 1),
    "oversized": PREFACE + f.HEADER.pack(2**30, f.DATA, 1),
    "data to a server": PREFACE + f.encode_data(1, b"x"),
    "cancel for an unopened stream": PREFACE + f.encode_cancel(7),
    "request body not msgpack": PREFACE + f.encode_frame(f.REQUEST, 1, b"\xc1"),
    "stream id reused": PREFACE + f.encode_request(3, "echo", {}, b"") * 2,
}


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
async def test_malformed_bytes_close_only_that_connection(
    served: tuple[TcpTransport, str], garbage: bytes
) -> None:
    client, address = served
    with anyio.fail_after(10):
        async with client.call(address, "forever", b"bystander", {}) as bystander:
            SEEN["bystander"] = Seen()
            await bystander.__anext__()
            assert await _closed_by_server(address, garbage)
            await bystander.__anext__()  # the other connection is untouched
        assert await collect(client, address, "echo", b"ok") == [b"ok"]


async def test_a_server_gone_mid_stream_is_a_transport_error() -> None:
    client = TcpTransport()
    SEEN["gone"] = Seen()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as server:
            address = await start_server(server)
            items = client.call(address, "forever", b"gone", {})
            await items.__anext__()
            server.cancel_scope.cancel()
        with pytest.raises(TransportError, match="lost"):
            async for _ in items:
                pass
    await client.aclose()


async def test_the_client_reconnects_to_a_restarted_server() -> None:
    client = TcpTransport()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as first:
            address = await start_server(first)
            assert await collect(client, address, "echo", b"a") == [b"a"]
            first.cancel_scope.cancel()
        with pytest.raises(TransportError):
            await collect(client, address, "echo", b"b")
        port = parse_address(address)[1]
        async with anyio.create_task_group() as second:
            assert await start_server(second, port=port) == address
            assert await collect(client, address, "echo", b"c") == [b"c"]
            second.cancel_scope.cancel()
    assert client.connections_opened == 2
    await client.aclose()


# -- through the runtime ---------------------------------------------------------------------


async def test_hello_pipeline_over_tcp() -> None:
    discovery = MemoryDiscovery()
    with anyio.fail_after(10):
        async with (
            Runtime(namespace="t", transport=TcpTransport(), discovery=discovery) as back_rt,
            Runtime(namespace="t", transport=TcpTransport(), discovery=discovery) as mid_rt,
        ):
            assert back_rt.address.startswith("tcp://")
            backend = Backend(BackendConfig(), component_info("t", "backend"), {})
            await back_rt.serve_component(backend)
            wired: dict[str, Any] = {"backend": mid_rt.client("backend")}
            middle = Middle(MiddleConfig(), component_info("t", "middle"), wired)
            await mid_rt.serve_component(middle)
            await middle.backend.wait_for_instances()
            client = mid_rt.client("middle")
            await client.wait_for_instances()
            async with client.stream(HELLO_GENERATE, HelloRequest("hello world")) as items:
                got = [item async for item in items]
            with pytest.raises(
                BadRequestError, match="generate: Object missing required field `text`"
            ):
                async with client.stream("generate", {"txt": 1}) as items:
                    [item async for item in items]
    assert got == [Text("Middle: Backend: hello"), Text("Middle: Backend: world-mid-back")]


async def test_an_item_larger_than_a_frame_is_a_remote_error() -> None:
    client = TcpTransport()  # sends the request; the server's frames are the small ones
    async with anyio.create_task_group() as tasks:
        address = await start_server(tasks, TcpTransport(max_frame_bytes=1024))
        try:
            with pytest.raises(RemoteError, match=r"yielded 5000 bytes; a tcp frame holds \d+"):
                await collect(client, address, "big", b"5000")
            # The connection stays usable for calls that fit.
            assert await collect(client, address, "echo", b"small") == [b"small"]
        finally:
            await client.aclose()
            tasks.cancel_scope.cancel()
