"""The transport interface: move a call's bytes to a server and its stream of results back.

A call is an endpoint path, a payload and headers; the answer is a stream of data frames
ending with an end frame or an error frame. Payloads are already encoded by the runtime,
so a transport only moves bytes; except a transport that declares ``carries_objects``
(the in-process one), to which the runtime hands requests and items as objects, unencoded.
Implementations live one per module beside this one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import Any, ClassVar, Self

from anyio.abc import TaskStatus

from dyn.context import Context

__all__ = ["PROTOCOL_VERSION", "CallStream", "Handler", "Transport"]

# The version of dyn's call protocol (transports/README.md), shared by every transport.
PROTOCOL_VERSION = 1

Handler = Callable[[str, Any, Context], AsyncIterator[Any]]
"""What a server runs per call: ``handler(path, payload, ctx)`` yields data frames.

Payload and frames are bytes, or any object on a transport that ``carries_objects``.

An exception it raises becomes an error frame (see ``dyn.transports._serving``).
A byte transport runs each call's iterator in a task of its own, from start to close, so
the handler may leave its context bound for the whole call; an object-carrying one may
run it in the caller's task.
"""


class CallStream(ABC):
    """The caller's side of one call: an async iterator of data frames.

    Iteration raises :class:`~dyn.errors.CallError` subclasses: ``TransportError`` when the
    connection breaks (never hangs on a dead peer), or the typed error the handler raised.
    Closing the stream before the end cancels the handler on the far side.
    """

    def __aiter__(self) -> Self:
        return self

    @abstractmethod
    async def __anext__(self) -> bytes: ...

    def has_ready(self) -> bool:
        """Whether the next data frame is here already (its ``__anext__`` will not wait).
        A hint for batching writes: a transport that cannot tell says False."""
        return False

    @abstractmethod
    async def aclose(self) -> None:
        """Stop the call; the far side sees a cancellation if it was still running."""

    @abstractmethod
    def close_nowait(self) -> None:
        """Like :meth:`aclose`, usable where awaiting is not possible (a cancelled task)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class Transport(ABC):
    """A way to reach servers. One object per process, shared by all its clients."""

    name: ClassVar[str]
    # True: payloads and frames are moved as the objects they are, never encoded; the
    # runtime then hands over messages by reference (they must be treated as immutable).
    carries_objects: ClassVar[bool] = False

    def __init__(self, *, protocol_version: int = PROTOCOL_VERSION, **options: Any) -> None:
        # Both sides of a call must speak the same version; a peer that does not gets a
        # ProtocolError naming both versions. Tests set another version on purpose.
        self.protocol_version = protocol_version
        self.options = options

    @abstractmethod
    async def serve(
        self, handler: Handler, *, host: str, port: int = 0, task_status: TaskStatus[str]
    ) -> None:
        """Serve calls with ``handler`` until cancelled.

        Listens on ``host:port`` (port 0: any free port) where that means something.
        Reports the address clients should dial through ``task_status.started(address)``.
        On cancellation, stops accepting, cancels the calls in flight and returns.
        """

    @abstractmethod
    def call(
        self, address: str, path: str, payload: bytes, headers: Mapping[str, str]
    ) -> CallStream:
        """Start a call to ``path`` on the server at ``address``. Does not block."""

    async def expose(self, namespace: str, component: str, instance_id: str) -> None:  # noqa: B027
        """An instance of ``component`` now serves on this transport's server(s). A
        transport with a component-wide address (nats: the component's queue group) takes
        calls to it from now on; most have none, and do nothing."""

    async def withdraw(self, namespace: str, component: str, instance_id: str) -> None:  # noqa: B027
        """The instance no longer takes new calls by the component-wide address."""

    async def aclose(self) -> None:  # noqa: B027 - a transport without a pool has nothing to do
        """Close pooled connections. The transport must not be used afterwards."""
