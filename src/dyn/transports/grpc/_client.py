"""The calling side: one call is one server-streaming RPC on a pooled grpclib Channel."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Any

import h2.exceptions
from grpclib.client import Channel, Stream
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.protocol import H2Protocol
from h2.errors import ErrorCodes

from dyn.errors import (
    CallError,
    OverloadedError,
    ProtocolError,
    TransportError,
    call_error_from_wire,
)
from dyn.settings import CLUSTER_SECRET_ENV
from dyn.transports._tls import describe_tls_error, tls_hint
from dyn.transports.base import CallStream
from dyn.transports.grpc._token import GRPC_METADATA_KEY, make_token
from dyn.transports.grpc._wire import CALL_METHOD, CallFrame, CallRequest, message_kind

__all__ = ["GrpcCall", "PooledChannel"]


class PooledChannel(Channel):
    """A grpclib Channel that remembers a TLS failure that ended its connection.

    grpclib reports a lost connection as a bare "Connection lost"; with TLS 1.3 that is
    how a server's refusal of our certificate arrives (after our side of the handshake),
    so the reason is kept here for the caller's error message.
    """

    tls_failure: ssl.SSLError | None = None

    def _protocol_factory(self) -> H2Protocol:
        plain = super()._protocol_factory()
        return _ReportingProtocol(self, plain.handler, plain.config, plain.h2_config)


class _ReportingProtocol(H2Protocol):
    def __init__(self, channel: PooledChannel, *args: Any) -> None:
        super().__init__(*args)
        self.channel = channel

    def connection_made(self, transport: Any) -> None:
        self.channel.tls_failure = None
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if isinstance(exc, ssl.SSLError):
            self.channel.tls_failure = exc
        super().connection_lost(exc)


class GrpcCall(CallStream):
    """One call; the RPC starts on the first ``__anext__``."""

    def __init__(
        self,
        address: str,
        request: CallRequest,
        channel: Callable[[str], PooledChannel],
        secret: bytes | None = None,
        tls_on: bool = False,
    ) -> None:
        self._address = address
        self._secret = secret
        self._tls_on = tls_on
        self._request = request
        self._channel = channel
        self._stream: Stream[CallRequest, CallFrame] | None = None
        self._done = False
        self._answered = False  # whether any frame came back: a TLS mismatch sends none

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            stream = self._stream or await self._open()
            frame = await stream.recv_message()
            if frame is None:
                # No end or error frame: the trailers say why (a GRPCError), or the
                # server broke the contract.
                await self._finish()
                raise ProtocolError(f"server at {self._address} ended the call without an end")
            self._answered = True
            kind = message_kind(frame)
            if kind == "data":
                assert frame.data is not None
                return frame.data
            await self._finish()
        except CallError:
            self.close_nowait()
            raise
        except GRPCError as exc:
            self.close_nowait()
            raise _from_status(self._address, exc) from exc
        except (StreamTerminatedError, OSError, h2.exceptions.H2Error) as exc:
            self.close_nowait()
            _undo_wrapper_cancel(exc)
            raise self._connection_failed(exc) from exc
        except Exception as exc:  # a frame that does not decode
            self.close_nowait()
            raise ProtocolError(f"bad frame from {self._address}: {exc!r}") from exc
        except BaseException:  # cancelled: reset the stream so the far handler stops
            self.close_nowait()
            raise
        if kind == "end":
            raise StopAsyncIteration
        if kind == "error":
            assert frame.error is not None
            raise call_error_from_wire(frame.error.code, frame.error.message)
        raise ProtocolError(f"server at {self._address} sent a frame of unknown kind")

    async def _open(self) -> Stream[CallRequest, CallFrame]:
        # A fresh token per call, bound to it: the server accepts each token once, for
        # this path and payload, within GRPC_MAX_SKEW_S of its clock.
        metadata = (
            None
            if self._secret is None
            else {
                GRPC_METADATA_KEY: make_token(
                    self._secret,
                    CALL_METHOD,
                    self._request.path,
                    self._request.payload,
                    time.time(),
                )
            }
        )
        stream = self._channel(self._address).request(
            CALL_METHOD, Cardinality.UNARY_STREAM, CallRequest, CallFrame, metadata=metadata
        )
        await stream.__aenter__()
        self._stream = stream
        await stream.send_message(self._request, end=True)
        return stream

    def _connection_failed(self, exc: Exception) -> TransportError:
        cause = exc if isinstance(exc, ssl.SSLError) else None
        if cause is None and not self._answered:
            cause = self._channel(self._address).tls_failure
        hint = tls_hint(self._tls_on)
        if cause is not None:
            return TransportError(
                f"TLS with the server at {self._address} failed: "
                f"{describe_tls_error(cause)}; {hint}"
            )
        message = f"connection to {self._address} failed: {exc}"
        if not self._answered and not isinstance(exc, ConnectionRefusedError):
            message += f" ({hint})"  # a server that speaks TLS when we do not, or not when we do
        return TransportError(message)

    async def _finish(self) -> None:
        """After the last frame: read the trailers (raising their error) and release."""
        self._done = True
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.__aexit__(None, None, None)

    def close_nowait(self) -> None:
        self._done = True
        stream, self._stream = self._stream, None
        if stream is not None:
            _reset_nowait(stream)

    async def aclose(self) -> None:
        self.close_nowait()


def _from_status(address: str, exc: GRPCError) -> CallError:
    if exc.status is Status.FAILED_PRECONDITION:  # the version check, see dyn.proto
        return ProtocolError(exc.message or f"server at {address} refused the call")
    if exc.status is Status.UNAUTHENTICATED:  # the cluster secret, see dyn.proto
        message = exc.message or f"cluster secret rejected by the server at {address}"
        if "requires" in message:
            message += f"; set {CLUSTER_SECRET_ENV} (or the transport option cluster_secret)"
        elif message.endswith("wrong secret") or ": " not in message:  # (older servers)
            message += f"; check that {CLUSTER_SECRET_ENV} is the same on both sides"
        return ProtocolError(message)
    if exc.status is Status.RESOURCE_EXHAUSTED:  # a full replay cache, see dyn.proto
        return OverloadedError(exc.message or f"the server at {address} is overloaded")
    if exc.status is Status.UNIMPLEMENTED:
        return ProtocolError(f"server at {address} does not serve dyn calls: {exc.message}")
    return TransportError(f"call to {address} failed: {exc.status.name} {exc.message or ''}")


def _reset_nowait(stream: Stream[CallRequest, CallFrame]) -> None:
    """Cancel the RPC without awaiting: reset the HTTP/2 stream and release it.

    grpclib's ``Stream.cancel`` and ``__aexit__`` are coroutines, but ``close_nowait`` runs
    where nothing can be awaited (a cancelled task, a finalizer), so this does their
    synchronous part. The reset makes grpclib cancel the handler's task on the server.
    """
    if not stream._send_request_done:
        return  # no HTTP/2 stream was opened
    h2_stream = stream._stream
    if h2_stream.closable:
        h2_stream.reset_nowait(ErrorCodes.CANCEL)
    stream._release_stream()  # also hands back the flow-control window of unread data


def _undo_wrapper_cancel(exc: BaseException) -> None:
    # grpclib wakes a task waiting on a broken stream by cancelling it and turning the
    # CancelledError into StreamTerminatedError. The task's cancel request stays counted,
    # which would make a later anyio cancel scope in this task re-raise instead of
    # catching its own cancellation; take it back.
    if isinstance(exc.__context__, asyncio.CancelledError):
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            task.uncancel()
