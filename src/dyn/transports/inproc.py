"""In-process transport: calls go through memory streams to a server in the same process.

Each call runs its handler as a task in the server's task group, exactly as a network
server would, so cancellation, deadlines and errors behave as they do over a socket.
It doubles as the test double for role code.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from dyn._streams import receive_soon, send_soon
from dyn.errors import ProtocolError, TransportError, call_error_from_wire
from dyn.runtime.context import Context
from dyn.transports._serving import Frame, run_handler
from dyn.transports.base import CallStream, Handler, Transport

__all__ = ["InprocTransport"]

# Frames buffered per call before the handler blocks: the backpressure bound.
STREAM_BUFFER = 16


@dataclass
class _Server:
    handler: Handler
    tasks: TaskGroup
    protocol_version: int


_servers: dict[str, _Server] = {}
_ids = itertools.count(1)


class InprocTransport(Transport):
    name: ClassVar[str] = "inproc"

    async def serve(
        self, handler: Handler, *, host: str, port: int = 0, task_status: TaskStatus[str]
    ) -> None:
        # A fixed port gives a fixed address, so a restarted server can be found again.
        address = f"inproc://{os.getpid()}-" + (f"port{port}" if port else str(next(_ids)))
        if address in _servers:
            raise TransportError(f"{address} is already being served")
        try:
            async with anyio.create_task_group() as tasks:
                _servers[address] = _Server(handler, tasks, self.protocol_version)
                task_status.started(address)
                await anyio.sleep_forever()
        finally:
            _servers.pop(address, None)

    def call(
        self, address: str, path: str, payload: bytes, headers: Mapping[str, str]
    ) -> CallStream:
        return _InprocCall(address, path, payload, headers, self.protocol_version)


class _InprocCall(CallStream):
    def __init__(
        self,
        address: str,
        path: str,
        payload: bytes,
        headers: Mapping[str, str],
        protocol_version: int,
    ):
        self._address = address
        self._protocol_version = protocol_version
        self._request = (path, payload, headers)
        self._scope = anyio.CancelScope()
        self._receive: MemoryObjectReceiveStream[Frame] | None = None
        self._ctx = Context.from_headers(headers)
        self._done = False

    def _start(self) -> MemoryObjectReceiveStream[Frame]:
        server = _servers.get(self._address)
        if server is None:
            raise TransportError(f"no server at {self._address}")
        if server.protocol_version != self._protocol_version:
            raise ProtocolError(
                f"server at {self._address} speaks dyn protocol version "
                f"{server.protocol_version}, this client speaks {self._protocol_version}"
            )
        send, receive = anyio.create_memory_object_stream[Frame](STREAM_BUFFER)
        server.tasks.start_soon(self._run, server.handler, send)
        self._receive = receive
        return receive

    async def _run(self, handler: Handler, send: MemoryObjectSendStream[Frame]) -> None:
        async with send:
            with self._scope:
                try:
                    path, payload, _ = self._request
                    await run_handler(handler, path, payload, self._ctx, partial(send_soon, send))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass  # the caller closed its end: nobody to tell

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        receive = self._receive or self._start()
        try:
            frame = await receive_soon(receive)
        except anyio.EndOfStream:
            self._finish()
            raise TransportError(f"server at {self._address} went away mid-call") from None
        except BaseException:
            self.close_nowait()
            raise
        kind, body, message = frame
        if kind == "data":
            assert isinstance(body, bytes)
            return body
        self._finish()
        if kind == "end":
            raise StopAsyncIteration
        raise call_error_from_wire(str(body), message)

    def _finish(self) -> None:
        self._done = True
        if self._receive is not None:
            self._receive.close()

    def close_nowait(self) -> None:
        if not self._done:
            self._ctx.cancel()
            self._scope.cancel()
        self._finish()

    async def aclose(self) -> None:
        self.close_nowait()
