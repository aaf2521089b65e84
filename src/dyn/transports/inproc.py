"""In-process transport: the caller's own task runs the handler, one item per pull.

A call drives the handler's async generator straight from ``__anext__``, so an item
crosses no task switch and no buffer on its way, and the handler runs only while the
caller pulls: the backpressure a network transport gets from flow control. What a
server task would give for free is kept by hand, so calls behave as they do over a
socket:

- closing the stream early marks the context cancelled and closes the handler at its
  ``yield``; a cancellation of the caller's task lands at the handler's ``await``, and
  its context already reads cancelled there. Calls a handler made are closed with it.
- a ``dyn-timeout`` deadline cancels the handler and the call raises DeadlineExceeded.
- a handler's exception arrives as the same typed error it would over a wire.
- a server that stops breaks its calls in flight: their next item is a TransportError.

Payloads and items are moved as the objects they are (``carries_objects``): the
runtime hands a typed request to the handler without encoding it. Given bytes, it moves
bytes. It doubles as the test double for role code; since nothing is encoded, a test
over it does not show that an item can be encoded (the conformance suite over tcp and
grpc does).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import math
import os
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, cast

import anyio
from anyio.abc import TaskStatus

from dyn.context import Context
from dyn.errors import DeadlineExceeded, ProtocolError, TransportError, call_error_from_wire
from dyn.transports._serving import error_to_wire
from dyn.transports.base import CallStream, Handler, Transport

__all__ = ["InprocTransport"]

_log = logging.getLogger("dyn.transports.inproc")


@dataclass(eq=False)
class _Server:
    handler: Handler
    protocol_version: int
    # Calls started and not yet over, to break when the server stops.
    calls: set[_InprocCall] = field(default_factory=set)


_servers: dict[str, _Server] = {}
_ids = itertools.count(1)

# The call whose handler this task is running now. A call started inside it is its child
# and is closed with it, as a network server's task cancellation would reach it.
_running: contextvars.ContextVar[_InprocCall | None] = contextvars.ContextVar(
    "dyn_inproc_call", default=None
)


class InprocTransport(Transport):
    name: ClassVar[str] = "inproc"
    carries_objects: ClassVar[bool] = True

    async def serve(
        self, handler: Handler, *, host: str, port: int = 0, task_status: TaskStatus[str]
    ) -> None:
        # A fixed port gives a fixed address, so a restarted server can be found again.
        address = f"inproc://{os.getpid()}-" + (f"port{port}" if port else str(next(_ids)))
        if address in _servers:
            raise TransportError(f"{address} is already being served")
        server = _Server(handler, self.protocol_version)
        _servers[address] = server
        try:
            task_status.started(address)
            await anyio.sleep_forever()
        finally:
            _servers.pop(address, None)
            for call in list(server.calls):
                call.break_off()

    def call(
        self, address: str, path: str, payload: object, headers: Mapping[str, str]
    ) -> CallStream:
        return _InprocCall(address, path, payload, headers, self.protocol_version)


class _CallContext(Context):
    """A context whose handler runs in its caller's task.

    A cancellation of that task is the caller going away, but it reaches the handler's
    ``await`` before the transport can call :meth:`cancel`; so a handler unwinding from
    a cancellation must already read ``cancelled``.
    """

    @property
    def cancelled(self) -> bool:
        return super().cancelled or _task_cancelled()


def _task_cancelled() -> bool:
    if anyio.current_effective_deadline() == -math.inf:  # an enclosing scope was cancelled
        return True
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not on asyncio: anyio's scopes are all there is
        return False
    # A plain asyncio cancel, such as the HTTP layer's when a client disconnects.
    return task is not None and task.cancelling() > 0


class _InprocCall(CallStream):
    def __init__(
        self,
        address: str,
        path: str,
        payload: object,
        headers: Mapping[str, str],
        protocol_version: int,
    ):
        self._address = address
        self._path = path
        self._payload = payload
        self._protocol_version = protocol_version
        self._ctx = _CallContext.from_headers(headers)
        self._items: AsyncGenerator[bytes, None] | None = None
        self._server: _Server | None = None
        self._parent: _InprocCall | None = None
        self._children: set[_InprocCall] = set()
        self._done = False  # over for the caller: ended, failed or closed
        self._broken = False  # its server stopped
        self._stepping = False  # the handler is running (it cannot be closed then)

    def _start(self) -> AsyncGenerator[bytes, None]:
        self._done = True  # until the handler exists there is nothing to close
        server = _servers.get(self._address)
        if server is None:
            raise TransportError(f"no server at {self._address}")
        if server.protocol_version != self._protocol_version:
            raise ProtocolError(
                f"server at {self._address} speaks dyn protocol version "
                f"{server.protocol_version}, this client speaks {self._protocol_version}"
            )
        self._server = server
        server.calls.add(self)
        parent = _running.get()
        if parent is not None and not parent._done:
            self._parent = parent
            parent._children.add(self)
        # Handlers are async generator functions; the Handler alias only promises an
        # iterator, but closing one needs the generator's aclose().
        items = cast(
            "AsyncGenerator[bytes, None]", server.handler(self._path, self._payload, self._ctx)
        )
        self._items = items
        self._done = False
        return items

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        items = self._items or self._start()
        if self._broken:
            await self.aclose()
            raise TransportError(f"server at {self._address} went away mid-call")
        deadline = self._ctx.deadline
        timed_out = False
        token = _running.set(self)
        self._stepping = True
        try:
            if deadline == math.inf:
                item = await items.__anext__()
            else:
                item = b""
                with anyio.CancelScope(deadline=deadline) as scope:
                    item = await items.__anext__()
                timed_out = scope.cancelled_caught
        except StopAsyncIteration:
            self._stepping = False
            self._forget()
            raise
        except Exception as exc:  # the handler's failure becomes the caller's typed error
            self._stepping = False
            self._forget()
            code, message = error_to_wire(exc)
            raise call_error_from_wire(code, message) from None
        except BaseException:  # the caller's task was cancelled inside the handler
            self._stepping = False
            self.close_nowait()
            raise
        finally:
            _running.reset(token)
        self._stepping = False
        if timed_out:
            await self.aclose()
            raise DeadlineExceeded(f"deadline passed while serving {self._path}")
        if self._broken:  # the server stopped while the handler ran
            await self.aclose()
            raise TransportError(f"server at {self._address} went away mid-call")
        if self._done:  # closed from elsewhere while the handler ran
            await self._close_items(items)
            raise StopAsyncIteration
        return item

    def break_off(self) -> None:
        """The server stopped: the caller's next pull fails."""
        self._broken = True
        self._ctx.cancel()

    def _forget(self) -> None:
        """The call is over: untrack it and close the calls its handler left open."""
        self._done = True
        if self._server is not None:
            self._server.calls.discard(self)
        if self._parent is not None:
            self._parent._children.discard(self)
            self._parent = None
        while self._children:
            self._children.pop().close_nowait()

    def close_nowait(self) -> None:
        if self._done:
            return
        self._ctx.cancel()
        if self._items is not None and not self._stepping:
            _close_now(self._items)
        # While the handler runs it cannot be closed; the pull running it does that.
        self._forget()

    async def aclose(self) -> None:
        if self._done:
            return
        self._ctx.cancel()
        if self._items is not None and not self._stepping:
            await self._close_items(self._items)
        self._forget()

    async def _close_items(self, items: AsyncGenerator[bytes, None]) -> None:
        try:
            # The handler's cleanup runs to its end even in a cancelled caller, as it
            # would in a server's task.
            with anyio.CancelScope(shield=True):
                await items.aclose()
        except Exception:
            _log.exception("closing the handler for %s failed", self._path)


def _close_now(items: AsyncGenerator[bytes, None]) -> None:
    """Close a handler parked at a ``yield`` without awaiting.

    Cleanup that only releases things finishes at once. Cleanup that must wait for
    something cannot, here: it is cut short at that wait.
    """
    closing = items.aclose()
    try:
        closing.send(None)
    except StopIteration:
        return
    except Exception:
        _log.exception("closing a handler failed")
        return
    with contextlib.suppress(RuntimeError):
        closing.close()
    _log.warning("a handler's cleanup waited while its call was closed; it was cut short")
