"""The calling side of the tcp transport: one multiplexed connection per server.

There is no background reader. A caller waiting for its next frame either reads the
socket for everyone (dispatching frames to every call's queue) or, if another caller is
already reading, waits to be woken; the reader hands the job on when it leaves. So
connections need no task group of their own, and nobody reads for calls nobody awaits,
which leaves backpressure to TCP and the per-stream windows.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

import anyio

from dyn.errors import (
    BadRequestError,
    CallError,
    ProtocolError,
    TransportError,
    call_error_from_wire,
)
from dyn.settings import CLUSTER_SECRET_ENV, TLS_CA_ENV, TLS_CERT_ENV, TLS_KEY_ENV
from dyn.transports import _auth
from dyn.transports._tcp_frames import (
    DATA,
    END,
    ERROR,
    FLAG_AUTH,
    PING,
    PONG,
    TYPE_NAMES,
    Frame,
    FrameError,
    encode_cancel,
    encode_pong,
    encode_preface,
    encode_request,
    encode_window,
    parse_error,
    parse_preface,
)
from dyn.transports._tcp_wire import TlsError, Wire, WireClosed, connect
from dyn.transports._tls import TLS_RECORD_TYPES, tls_hint
from dyn.transports.base import CallStream

__all__ = ["ClientConnection", "TcpCall", "fresh_error"]

_LAST_STREAM_ID = 2**32 - 1


def fresh_error(error: CallError) -> CallError:
    # One error object per raise, so tracebacks of different callers do not pile up.
    # copy.copy rebuilds the exception from its message and state, without a traceback.
    return copy.copy(error)


class _Ended:
    """Marks a call whose server sent END (or whose caller closed it)."""


_ENDED = _Ended()


class ClientConnection:
    """A connection to one server address, shared by every call to it."""

    def __init__(self, address: str, host: str, port: int, max_frame_bytes: int) -> None:
        self.address = address
        self.host = host
        self.port = port
        self.max_frame_bytes = max_frame_bytes
        self.wire: Wire | None = None
        self.ready = anyio.Event()
        self.error: CallError | None = None
        self.calls: dict[int, TcpCall] = {}
        self.on_dead: Callable[[ClientConnection], None] = lambda conn: None
        # Set when the opener was cancelled: others waiting for it should try again.
        self.open_abandoned = False
        self._next_id = 1
        self._reading = False
        self._waiters: dict[int, anyio.Event] = {}
        self._flush_pending = False

    # -- opening --------------------------------------------------------------------------

    async def open(
        self,
        protocol_version: int,
        timeout_s: float,
        secret: bytes | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """Connect, start TLS if ``tls``, shake hands. Raises TransportError or ProtocolError."""
        where = f"{self.host}:{self.port}"
        try:
            with anyio.fail_after(timeout_s):
                sock = await connect(self.host, self.port)
                wire = Wire(sock, self.max_frame_bytes)
                try:
                    if tls is not None:
                        await wire.start_tls(tls, server_side=False)
                    await self._handshake(wire, where, protocol_version, secret)
                except BaseException:
                    wire.close()
                    raise
        except TimeoutError:
            raise TransportError(f"timed out after {timeout_s}s connecting to {where}") from None
        except OSError as exc:
            raise TransportError(f"cannot connect to {where}: {exc.strerror or exc}") from exc
        except TlsError as exc:
            # With TLS 1.3 the server judges our certificate after our side of the
            # handshake is done, so its refusal can arrive with the first read.
            raise TransportError(
                f"TLS with the server at {where} failed: {exc}; {_tls_hint(tls)}"
            ) from None
        except WireClosed as exc:
            raise TransportError(
                f"{where} closed the connection in the handshake: {exc}; {_tls_hint(tls)}"
            ) from None
        self.wire = wire

    @staticmethod
    async def _handshake(
        wire: Wire, where: str, protocol_version: int, secret: bytes | None
    ) -> None:
        wire.write(encode_preface(protocol_version))
        await wire.drain()
        preface = await wire.read_preface()
        try:
            version, flags = parse_preface(preface)
        except FrameError:
            if preface[:1] and preface[0] in TLS_RECORD_TYPES:
                raise ProtocolError(
                    f"the server at {where} speaks TLS and this client does not; set "
                    f"{TLS_CERT_ENV}, {TLS_KEY_ENV} and {TLS_CA_ENV}"
                ) from None
            raise ProtocolError(f"{where} is not a dyn tcp server (it sent {preface!r})") from None
        if version != protocol_version:
            raise ProtocolError(
                f"server at {where} speaks dyn tcp protocol version {version}, "
                f"this client speaks {protocol_version}"
            )
        if not flags & FLAG_AUTH:
            if secret is not None:
                # Calls carry requests (prompts) a server outside the cluster must not get.
                raise ProtocolError(
                    f"the server at {where} does not require a cluster secret but this client "
                    f"has one; give the server the same {CLUSTER_SECRET_ENV}"
                )
            return
        if secret is None:
            raise ProtocolError(
                f"the server at {where} requires a cluster secret; set "
                f"{CLUSTER_SECRET_ENV} (or the transport option cluster_secret)"
            )
        server_nonce = await wire.read_exact(_auth.NONCE_BYTES)
        client_nonce = _auth.new_nonce()
        proof = _auth.tag(secret, _auth.TCP_CLIENT_LABEL, server_nonce, client_nonce)
        wire.write(client_nonce + proof)
        await wire.drain()
        try:
            answer = await wire.read_exact(_auth.TAG_BYTES)
        except WireClosed:
            # The server closes without a word on a wrong proof (tcp.md, 1.1).
            raise ProtocolError(
                f"cluster secret rejected by the server at {where}; check that "
                f"{CLUSTER_SECRET_ENV} is the same on both sides"
            ) from None
        expected = _auth.tag(secret, _auth.TCP_SERVER_LABEL, server_nonce, client_nonce)
        if not hmac.compare_digest(answer, expected):
            raise ProtocolError(f"the server at {where} could not prove it has the cluster secret")

    def alive(self) -> bool:
        """Whether new calls may use this connection (it notices a closed peer here)."""
        if self.error is not None or self.wire is None:
            return False
        if self._next_id > _LAST_STREAM_ID:
            return False  # stream ids ran out: retire it, calls in flight carry on
        if not self._reading:  # a reader would already have seen the peer go
            try:
                while (frames := self.wire.poll_nowait()) is not None:
                    self._dispatch(frames)
            except (WireClosed, FrameError) as exc:
                self._fail(exc)
        return self.error is None

    def fail(self, error: CallError) -> None:
        """Close the connection; calls on it raise ``error`` once their queues are empty."""
        if self.error is not None:
            return
        self.error = error
        if self.wire is not None:
            self.wire.close()
        for waiter in self._waiters.values():
            waiter.set()
        self._waiters.clear()
        self.ready.set()
        self.on_dead(self)

    def _fail(self, exc: Exception) -> None:
        if isinstance(exc, FrameError):
            self.fail(ProtocolError(f"server at {self.address} sent a malformed frame: {exc}"))
        else:
            self.fail(TransportError(f"connection to {self.address} lost: {exc}"))

    # -- calls ----------------------------------------------------------------------------

    def _flush_soon(self) -> None:
        """Hand the queued frames to the kernel once the current loop turn is over: the
        REQUESTs, WINDOWs and CANCELs of one turn (a burst of calls) go in one send."""
        if self._flush_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop running (a teardown): now, as it is
            self._flush_now()
            return
        self._flush_pending = True
        loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_pending = False
        wire = self.wire
        if wire is None:
            return
        wire.flush_nowait()
        if wire.pending and wire.closed is None:
            # The kernel's buffer is full (rare: calls that are large drain themselves,
            # see TcpCall._open): try again shortly rather than wait for the next write.
            self._flush_pending = True
            asyncio.get_running_loop().call_later(_RETRY_FLUSH_S, self._flush_now)

    def start(self, call: TcpCall, path: str, payload: bytes, headers: Mapping[str, str]) -> int:
        """Send a call's REQUEST and its first window grant; returns its stream id."""
        assert self.wire is not None
        stream_id = self._next_id
        request = encode_request(stream_id, path, headers, payload)
        if len(request) - 4 > self.max_frame_bytes:
            raise BadRequestError(
                f"request of {len(payload)} bytes is over the tcp frame limit of "
                f"{self.max_frame_bytes} bytes (option max_frame_bytes)"
            )
        self._next_id += 2
        self.calls[stream_id] = call
        self.wire.write(request + encode_window(stream_id, call.window))
        self._flush_soon()
        return stream_id

    def grant(self, stream_id: int, increment: int) -> None:
        assert self.wire is not None
        self.wire.write(encode_window(stream_id, increment))
        self._flush_soon()

    def cancel(self, stream_id: int) -> None:
        """Forget a call and tell the server, without waiting (usable from sync code)."""
        if self.calls.pop(stream_id, None) is not None and self.wire is not None:
            self.wire.write(encode_cancel(stream_id))
            self._flush_soon()
        waiter = self._waiters.pop(stream_id, None)
        if waiter is not None:
            waiter.set()

    async def drain(self) -> None:
        """Wait until queued bytes are in the kernel (bounds a big REQUEST's memory)."""
        assert self.wire is not None
        try:
            await self.wire.drain()
        except WireClosed as exc:
            self._fail(exc)
        if self.error is not None:
            raise fresh_error(self.error)

    async def wait_for(self, call: TcpCall) -> None:
        """Return once ``call`` has a frame or has ended; raise if the connection broke."""
        assert self.wire is not None
        try:
            while not call.queue and call.final is None:
                if self.error is not None:
                    raise fresh_error(self.error)
                if self._reading:
                    waiter = self._waiters[call.stream_id] = anyio.Event()
                    try:
                        await waiter.wait()
                    finally:
                        if self._waiters.get(call.stream_id) is waiter:
                            del self._waiters[call.stream_id]
                    continue
                self._reading = True
                try:
                    self._dispatch(await self.wire.receive())
                except (WireClosed, FrameError) as exc:
                    self._fail(exc)
                finally:
                    self._reading = False
        finally:
            # Whoever leaves makes sure someone still reads for the calls left waiting.
            if not self._reading and self._waiters:
                self._waiters.pop(next(iter(self._waiters))).set()

    def _dispatch(self, frames: list[Frame]) -> None:
        calls, waiters = self.calls, self._waiters
        for ftype, stream_id, body in frames:
            call = calls.get(stream_id)
            if call is None:
                if ftype == PING:
                    assert self.wire is not None
                    self.wire.write(encode_pong(body))
                    self.wire.flush_nowait()
                elif ftype == PONG:
                    pass
                elif ftype not in (DATA, END, ERROR):
                    raise FrameError(f"a server may not send {TYPE_NAMES[ftype]}")
                elif stream_id >= self._next_id:
                    raise FrameError(f"{TYPE_NAMES[ftype]} for unopened stream {stream_id}")
                continue  # a call that was just closed: late frames are a race, not an error
            if ftype == DATA:
                if call.credit <= 0:
                    raise FrameError(f"DATA beyond stream {stream_id}'s window")
                call.credit -= len(body)
                call.queue.append(body)
            elif ftype == END:
                call.final = _ENDED
                del calls[stream_id]
            elif ftype == ERROR:
                call.final = call_error_from_wire(*parse_error(body))
                del calls[stream_id]
            else:
                raise FrameError(f"a server may not send {TYPE_NAMES[ftype]}")
            if waiters:
                waiter = waiters.pop(stream_id, None)
                if waiter is not None:
                    waiter.set()


class TcpCall(CallStream):
    """One call over a pooled connection. Connects lazily, on the first ``__anext__``."""

    def __init__(
        self,
        get_connection: Callable[[], Awaitable[ClientConnection]],
        path: str,
        payload: bytes,
        headers: Mapping[str, str],
        window: int,
    ) -> None:
        self._get_connection = get_connection
        self._request: tuple[str, bytes, Mapping[str, str]] | None = (path, payload, headers)
        self._conn: ClientConnection | None = None
        self._closed = False
        self.stream_id = 0
        self.window = window
        self.credit = window
        self._consumed = 0
        self.queue: deque[bytes] = deque()
        self.final: _Ended | CallError | None = None

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        try:
            conn = self._conn or await self._open()
            if not self.queue and self.final is None:
                await conn.wait_for(self)
        except BaseException:
            self.close_nowait()
            raise
        if self.queue:
            body = self.queue.popleft()
            self._consumed += len(body)
            # Grant credit back in halves: few WINDOW frames, and the sender never idles.
            if self._consumed >= self.window // 2 and self.final is None:
                conn.grant(self.stream_id, self._consumed)
                self.credit += self._consumed
                self._consumed = 0
            return body
        final = self.final
        self.close_nowait()
        if isinstance(final, CallError):
            raise final
        raise StopAsyncIteration

    def has_ready(self) -> bool:
        return bool(self.queue)

    async def _open(self) -> ClientConnection:
        assert self._request is not None
        path, payload, headers = self._request
        conn = await self._get_connection()
        self.stream_id = conn.start(self, path, payload, headers)
        self._conn, self._request = conn, None
        assert conn.wire is not None
        if conn.wire.pending > _DRAIN_ABOVE:
            # A large request waits until the kernel has it (backpressure); small ones
            # go out with the loop turn's other frames (ClientConnection._flush_soon).
            await conn.drain()
        return conn

    def close_nowait(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.queue.clear()
        if self.final is None:
            self.final = _ENDED
        if self._conn is not None:
            self._conn.cancel(self.stream_id)

    async def aclose(self) -> None:
        self.close_nowait()


# Queued bytes past which opening a call waits for the kernel to take them.
_DRAIN_ABOVE = 64 * 1024
# How soon a flush the kernel could not take all of is tried again.
_RETRY_FLUSH_S = 0.001


def _tls_hint(tls: ssl.SSLContext | None) -> str:
    return tls_hint(tls is not None)
