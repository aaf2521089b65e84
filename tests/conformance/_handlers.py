"""The handler every transport serves in the conformance suite, and a server entry point.

Paths select behaviours; payloads are plain bytes (the transport never decodes them).
Run as a script (``python _handlers.py TRANSPORT PORT``) it serves in its own process and
prints the address, so tests can kill and restart a real server.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio

from dyn import plugins
from dyn.context import Context
from dyn.errors import BadRequestError

CHUNK = 64 * 1024

# What the handlers observed, for tests that serve in this process.
produced: dict[str, int] = {}
cancelled_at: dict[str, float] = {}
cancel_seen: dict[str, anyio.Event] = {}
started: dict[str, anyio.Event] = {}


def _record_cancel(key: str) -> None:
    cancelled_at[key] = time.perf_counter()
    cancel_seen.setdefault(key, anyio.Event()).set()


async def wait_cancelled(key: str) -> float:
    """When the handler for ``key`` saw its cancellation (perf_counter time)."""
    await cancel_seen.setdefault(key, anyio.Event()).wait()
    return cancelled_at[key]


async def handler(path: str, payload: bytes, ctx: Context) -> AsyncIterator[bytes]:
    if path == "echo":
        yield payload
    elif path == "count":
        for i in range(int(payload)):
            yield str(i).encode()
    elif path == "flood":
        # As fast as flow control allows: 64 KiB chunks, 256 MiB in all.
        key = payload.decode()
        produced[key] = 0
        chunk = b"x" * CHUNK
        for _ in range(4096):
            yield chunk
            produced[key] += CHUNK
    elif path == "forever":
        key = payload.decode()
        started.setdefault(key, anyio.Event()).set()
        try:
            while True:
                yield b"tick"
                await anyio.sleep(0.005)
        finally:
            if ctx.cancelled:
                _record_cancel(key)
    elif path == "bad-request":
        yield b"first"
        raise BadRequestError("the payload was not what I expected")
    elif path == "bug":
        raise ValueError("something broke inside")
    elif path == "sleep":
        key = payload.decode()
        try:
            await anyio.sleep(30)
            yield b"woke"
        finally:
            if ctx.cancelled:
                _record_cancel(key)
    else:
        raise BadRequestError(f"no such test path {path!r}")


async def _serve(transport_name: str, port: int) -> None:
    transport: Any = plugins.load("dyn.transports", transport_name)()
    async with anyio.create_task_group() as tasks:
        address = await tasks.start(
            lambda task_status: transport.serve(
                handler, host="127.0.0.1", port=port, task_status=task_status
            )
        )
        print(address, flush=True)


if __name__ == "__main__":
    anyio.run(_serve, sys.argv[1], int(sys.argv[2]))
