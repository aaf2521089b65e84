"""The serving side of the tcp transport: accept connections, run one task per call.

Each connection has a reader (this module's loop), a writer task that batches outgoing
frames, and one task per call, all in the connection's task group: losing the
connection cancels its calls, and cancelling the server cancels every connection.
"""

from __future__ import annotations

import hmac
import logging
import socket
import ssl
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup

from dyn.context import Context
from dyn.errors import RemoteError
from dyn.settings import TLS_CA_ENV, TLS_CERT_ENV, TLS_KEY_ENV
from dyn.transports import _auth
from dyn.transports._serving import ReplyFrame, run_handler
from dyn.transports._tcp_frames import (
    CANCEL,
    DATA,
    FLAG_AUTH,
    HEADER,
    MAGIC,
    PING,
    PONG,
    PREFACE_SIZE,
    REQUEST,
    TYPE_NAMES,
    WINDOW,
    FrameError,
    decode_preface,
    encode_end,
    encode_error,
    encode_pong,
    encode_preface,
    parse_request,
    parse_window,
)
from dyn.transports._tcp_wire import TlsError, Wire, WireClosed
from dyn.transports._tls import TLS_RECORD_TYPES
from dyn.transports.base import Handler

__all__ = ["ServerOptions", "serve_connection"]

log = logging.getLogger("dyn.transports.tcp")

# A window above this is a broken peer, not a generous one (HTTP/2 uses the same bound).
MAX_WINDOW = 2**31 - 1


@dataclass(frozen=True)
class ServerOptions:
    protocol_version: int
    max_frame_bytes: int
    handshake_timeout_s: float
    # The cluster secret callers must prove they know; None: anyone may call.
    secret: bytes | None = None
    # The server side of mutual TLS; None: plain TCP.
    tls: ssl.SSLContext | None = None
    # Bytes queued for the socket above which handlers wait: bounds the writer's memory.
    write_high_water: int = 256 * 2**10


class _Stream:
    __slots__ = ("ctx", "scope", "waiter", "window")

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.scope = anyio.CancelScope()
        self.window = 0  # the caller grants its window with a WINDOW right after REQUEST
        self.waiter: anyio.Event | None = None

    def stop(self) -> None:
        self.ctx.cancel()  # first, so the handler's cleanup sees ctx.cancelled
        self.scope.cancel()


async def serve_connection(
    sock: socket.socket, peer: str, handler: Handler, options: ServerOptions
) -> None:
    """Serve one accepted connection until it closes or the server is cancelled."""
    wire = Wire(sock, options.max_frame_bytes)
    try:
        if options.tls is not None:
            with anyio.move_on_after(options.handshake_timeout_s) as handshake:
                await wire.start_tls(options.tls, server_side=True)
            if handshake.cancelled_caught:
                log.info("closing connection from %s: no TLS handshake in time", peer)
                return
        preface = b""
        with anyio.move_on_after(options.handshake_timeout_s):
            preface = await wire.read_preface()
        if len(preface) < PREFACE_SIZE and MAGIC.startswith(preface[:4]):
            log.info("closing connection from %s: no dyn tcp preface", peer)
            return
        try:
            version = decode_preface(preface)
        except FrameError:
            if preface[:1] and preface[0] in TLS_RECORD_TYPES:
                log.warning(
                    "closing connection from %s: it speaks TLS and this server does not "
                    "(set %s, %s and %s here too)",
                    peer,
                    TLS_CERT_ENV,
                    TLS_KEY_ENV,
                    TLS_CA_ENV,
                )
            else:
                log.info("closing connection from %s: not a dyn tcp client", peer)
            return
        if version != options.protocol_version:
            # Answer even on a mismatch, so the client can name both versions.
            wire.write(encode_preface(options.protocol_version))
            await wire.drain()
            log.warning(
                "closing connection from %s: it speaks dyn tcp protocol version %d, "
                "this server speaks %d",
                peer,
                version,
                options.protocol_version,
            )
            return
        if options.secret is None:
            wire.write(encode_preface(options.protocol_version))
            await wire.drain()
        elif not await _authenticate(wire, peer, options, options.secret):
            return
        await _Connection(wire, peer, handler, options).run()
    except TlsError as exc:
        log.warning("closing connection from %s: TLS: %s", peer, exc)
    except WireClosed:
        pass
    finally:
        wire.close()


async def _authenticate(wire: Wire, peer: str, options: ServerOptions, secret: bytes) -> bool:
    """The cluster-secret exchange (tcp.md, 1.1); False: the caller was refused."""
    server_nonce = _auth.new_nonce()
    wire.write(encode_preface(options.protocol_version, FLAG_AUTH) + server_nonce)
    await wire.drain()
    answer = b""
    with anyio.move_on_after(options.handshake_timeout_s):
        answer = await wire.read_exact(_auth.NONCE_BYTES + _auth.TAG_BYTES)
    if not answer:
        log.warning("closing connection from %s: no cluster-secret proof in time", peer)
        return False
    client_nonce, proof = answer[: _auth.NONCE_BYTES], answer[_auth.NONCE_BYTES :]
    expected = _auth.tag(secret, _auth.TCP_CLIENT_LABEL, server_nonce, client_nonce)
    if not hmac.compare_digest(proof, expected):
        # Nothing is sent back: a caller without the secret learns nothing more.
        log.warning("closing connection from %s: cluster secret rejected", peer)
        return False
    wire.write(_auth.tag(secret, _auth.TCP_SERVER_LABEL, server_nonce, client_nonce))
    await wire.drain()
    return True


class _Connection:
    def __init__(self, wire: Wire, peer: str, handler: Handler, options: ServerOptions) -> None:
        self.wire = wire
        self.peer = peer
        self.handler = handler
        self.options = options
        self.streams: dict[int, _Stream] = {}
        self.last_id = 0

    async def run(self) -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self.wire.run_writer)
            try:
                while True:
                    for ftype, stream_id, body in await self.wire.receive():
                        self._on_frame(tasks, ftype, stream_id, body)
            except FrameError as exc:
                log.warning("closing connection from %s: malformed frame: %s", self.peer, exc)
            except WireClosed:
                pass
            finally:
                for stream in self.streams.values():
                    stream.stop()
                tasks.cancel_scope.cancel()

    def _on_frame(self, tasks: TaskGroup, ftype: int, stream_id: int, body: bytes) -> None:
        if ftype == REQUEST:
            if stream_id <= self.last_id:
                raise FrameError(f"REQUEST reuses stream id {stream_id} (last {self.last_id})")
            self.last_id = stream_id
            path, headers, payload = parse_request(body)
            stream = _Stream(Context.from_headers(headers))
            self.streams[stream_id] = stream
            tasks.start_soon(self._run, stream_id, stream, path, payload)
        elif ftype in (WINDOW, CANCEL):
            known = self.streams.get(stream_id)
            if known is None:
                if stream_id > self.last_id:
                    raise FrameError(f"{TYPE_NAMES[ftype]} for unopened stream {stream_id}")
                return  # the call just finished: a race, not an error
            if ftype == CANCEL:
                known.stop()
                return
            known.window += parse_window(body)
            if known.window > MAX_WINDOW:
                raise FrameError(f"stream {stream_id}'s window grew past {MAX_WINDOW}")
            if known.waiter is not None and known.window > 0:
                known.waiter.set()
                known.waiter = None
        elif ftype == PING:
            self.wire.write(encode_pong(body))
        elif ftype != PONG:
            raise FrameError(f"a client may not send {TYPE_NAMES[ftype]}")

    async def _run(self, stream_id: int, stream: _Stream, path: str, payload: bytes) -> None:
        wire, high_water = self.wire, self.options.write_high_water
        limit = self.options.max_frame_bytes - 5
        header = HEADER.pack

        async def send(frame: ReplyFrame) -> None:
            kind, body, message = frame
            if kind == "data":
                assert isinstance(body, bytes)
                if len(body) > limit:
                    raise RemoteError(
                        f"the handler yielded {len(body)} bytes; a tcp frame holds {limit}"
                    )
                while stream.window <= 0:  # flow control: the caller has not caught up
                    stream.waiter = anyio.Event()
                    await stream.waiter.wait()
                stream.window -= len(body)
                wire.write_frame(header(5 + len(body), DATA, stream_id), body)
                if wire.pending > high_water:
                    await wire.wait_for_room(high_water)
            elif kind == "end":
                wire.write(encode_end(stream_id))
            else:
                wire.write(encode_error(stream_id, str(body), message))

        try:
            with stream.scope:
                await run_handler(self.handler, path, payload, stream.ctx, send)
        finally:
            self.streams.pop(stream_id, None)
