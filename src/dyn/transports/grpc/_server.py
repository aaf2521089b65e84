"""The serving side: a grpclib server whose one method runs dyn handlers.

Each call runs in the task grpclib creates for its HTTP/2 stream. grpclib cancels that
task when the caller resets the stream or the connection drops; the handler itself runs
in a child task so that the context can be marked cancelled *before* the handler is
stopped, as the ``Context`` contract promises.
"""

from __future__ import annotations

import hmac
import logging
import socket
import time
import weakref
from typing import Any, NoReturn

import anyio
import anyio.lowlevel
import h2.exceptions
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.protocol import H2Protocol
from grpclib.server import Server, Stream
from h2.settings import SettingCodes

from dyn.context import Context
from dyn.transports._serving import ReplyFrame, run_handler
from dyn.transports.base import Handler as DynHandler
from dyn.transports.grpc._token import (
    GRPC_METADATA_KEY,
    TokenBusy,
    TokenChecker,
    TokenRefused,
    body_digest,
)
from dyn.transports.grpc._wire import CALL_METHOD, CallFrame, CallRequest, frame_to_message

__all__ = ["EndpointService", "TrackingServer", "bind"]

log = logging.getLogger("dyn.transports.grpc")

# Streams one connection may carry at once. h2's default of 100 would make the 101st
# concurrent call between two processes queue silently behind the others; dyn sends all
# calls between a pair of peers over one connection, so allow far more.
MAX_CONCURRENT_STREAMS = 10_000


class EndpointService:
    """The ``dyn.v1.Endpoint`` service: ``Call`` runs ``handler`` and streams its frames."""

    def __init__(
        self,
        handler: DynHandler,
        protocol_version: int,
        address: str,
        secret: bytes | None = None,
    ) -> None:
        self.handler = handler
        self.protocol_version = protocol_version
        self.address = address
        self.secret = secret
        # One per server: it owns the replay cache of the tokens this server accepted.
        self._tokens = None if secret is None else TokenChecker(secret, CALL_METHOD)

    def __mapping__(self) -> dict[str, Handler]:
        return {CALL_METHOD: Handler(self._call, Cardinality.UNARY_STREAM, CallRequest, CallFrame)}

    async def _call(self, stream: Stream[CallRequest, CallFrame]) -> None:
        # Before reading the request: a caller without the secret gets nothing buffered.
        digest = None if self._tokens is None else self._admit(stream)
        request = await stream.recv_message()
        assert request is not None  # grpclib ends a unary request with its message
        if digest is not None and not hmac.compare_digest(
            digest, body_digest(request.path, request.payload)
        ):
            self._refuse(stream, TokenRefused("token made for another call (path or payload)"))
        if request.protocol_version != self.protocol_version:
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                f"server at {self.address} speaks dyn protocol version "
                f"{self.protocol_version}, this client speaks {request.protocol_version}",
            )
        ctx = Context.from_headers(request.headers)

        async def send(frame: ReplyFrame) -> None:
            try:
                # Waits for HTTP/2 flow control: a slow caller makes the handler wait.
                await stream.send_message(frame_to_message(frame))
            except h2.exceptions.H2Error as exc:
                # The caller reset the stream and grpclib has not cancelled us yet.
                ctx.cancel()
                raise _CallerGone from exc
            # grpclib only suspends when the flow-control window is used up, so a handler
            # that never awaits would fill a whole window in one go and starve the event
            # loop (other calls, the reset that cancels this one). Yield once per frame,
            # as an anyio memory stream does.
            await anyio.lowlevel.checkpoint()

        finished = anyio.Event()

        async def run() -> None:
            try:
                await run_handler(self.handler, request.path, request.payload, ctx, send)
            except _CallerGone:
                pass  # nobody to tell; the handler has been stopped
            finally:
                finished.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run)
            try:
                await finished.wait()
            except anyio.get_cancelled_exc_class():
                # The caller reset the stream, the connection dropped or the server is
                # shutting down: mark the context first, then stop the handler.
                ctx.cancel()
                tasks.cancel_scope.cancel()
                raise

    def _admit(self, stream: Stream[CallRequest, CallFrame]) -> bytes:
        """Check the call's token; return the request digest it was made for."""
        assert self._tokens is not None
        token = stream.metadata.get(GRPC_METADATA_KEY) if stream.metadata is not None else None
        if not isinstance(token, str):
            raise GRPCError(
                Status.UNAUTHENTICATED, f"the server at {self.address} requires a cluster secret"
            )
        try:
            return self._tokens.admit(token, time.time())
        except TokenRefused as exc:
            self._refuse(stream, exc)

    def _refuse(self, stream: Stream[CallRequest, CallFrame], exc: TokenRefused) -> NoReturn:
        log.warning("refused a call to %s from %s: %s", self.address, stream.peer.addr(), exc)
        if isinstance(exc, TokenBusy):  # the caller may retry with a fresh token
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED, f"the server at {self.address} refused a call: {exc}"
            ) from exc
        raise GRPCError(
            Status.UNAUTHENTICATED,
            f"cluster secret rejected by the server at {self.address}: {exc}",
        ) from exc


class _CallerGone(Exception):
    """The stream to the caller is closed: stop the handler, send nothing more."""


class _Protocol(H2Protocol):
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        # grpclib has no setting for this; the h2 connection is only reachable here.
        h2_connection = self.connection._connection
        h2_connection.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS})
        self.connection.flush()


class TrackingServer(Server):
    """A grpclib Server that can close its open connections, not only its listener.

    ``Server.close`` stops listening and cancels the calls in flight but leaves the
    connections open, so a caller mid-stream would wait forever for trailers and a
    pooled connection could still start calls on a server that has stopped.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Weak: a closed connection's protocol goes away with its transport.
        self.protocols: weakref.WeakSet[H2Protocol] = weakref.WeakSet()

    def _protocol_factory(self) -> H2Protocol:
        plain = super()._protocol_factory()
        protocol = _Protocol(plain.handler, plain.config, plain.h2_config)
        self.protocols.add(protocol)
        return protocol

    def close_connections(self) -> None:
        for protocol in list(self.protocols):
            if hasattr(protocol, "processor"):  # connection_made has run
                protocol.processor.close("server shut down")
        self.protocols.clear()


async def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port; binding here tells us the real port."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        # A restarted server may take its old port back while old connections linger.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    except OSError:
        sock.close()
        raise
    return sock
