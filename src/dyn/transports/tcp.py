"""The tcp transport: dyn's own framing over one multiplexed TCP connection per peer.

The wire format is specified in ``transports/tcp.md``; the frame codec is in
``_tcp_frames``, socket I/O in ``_tcp_wire``, and the two sides in ``_tcp_server`` and
``_tcp_client``. Addresses look like ``tcp://127.0.0.1:5000``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import anyio
from anyio.abc import TaskStatus

from dyn.errors import CallError, TransportError
from dyn.transports._auth import resolve_secret
from dyn.transports._tcp_client import ClientConnection, TcpCall, fresh_error
from dyn.transports._tcp_frames import DEFAULT_MAX_FRAME_BYTES, DEFAULT_STREAM_WINDOW_BYTES
from dyn.transports._tcp_server import MAX_WINDOW, ServerOptions, serve_connection
from dyn.transports._tcp_wire import listen, tune
from dyn.transports._tls import resolve_tls
from dyn.transports.base import PROTOCOL_VERSION, CallStream, Handler, Transport

__all__ = ["TcpTransport", "parse_address"]

log = logging.getLogger("dyn.transports.tcp")

DEFAULT_CONNECT_TIMEOUT_S = 5.0


def parse_address(address: str) -> tuple[str, int]:
    """``(host, port)`` from ``tcp://HOST:PORT`` (IPv6 hosts in brackets)."""
    rest = address.removeprefix("tcp://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise TransportError(f"bad tcp address {address!r}; expected tcp://HOST:PORT")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _format_address(host: str, port: int) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


class TcpTransport(Transport):
    """Options: ``max_frame_bytes`` (16 MiB), ``stream_window_bytes`` (256 KiB, the
    receive window each call grants), ``connect_timeout_s`` (5; also bounds the handshake),
    ``cluster_secret`` (when set, the server refuses callers that cannot prove they have
    it, and the client refuses servers that do not ask), ``tls_cert``, ``tls_key``,
    ``tls_ca`` (all three turn on mutual TLS, see ``dyn.transports._tls``; some but not
    all: ``ConfigError``). A launch passes these four from its settings
    (:class:`dyn.settings.TransportSecurity`); an option not given falls back to its
    environment variable, for programs that build a transport themselves.
    """

    name: ClassVar[str] = "tcp"

    def __init__(
        self,
        *,
        protocol_version: int = PROTOCOL_VERSION,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        stream_window_bytes: int = DEFAULT_STREAM_WINDOW_BYTES,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        cluster_secret: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_ca: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(protocol_version=protocol_version, **options)
        if not 64 <= max_frame_bytes < 2**32:
            raise ValueError(f"max_frame_bytes must be in 64..2**32-1, not {max_frame_bytes}")
        if not 1 <= stream_window_bytes <= MAX_WINDOW:
            raise ValueError(
                f"stream_window_bytes must be in 1..{MAX_WINDOW}, not {stream_window_bytes}"
            )
        if connect_timeout_s <= 0:
            raise ValueError(f"connect_timeout_s must be positive, not {connect_timeout_s}")
        self.max_frame_bytes = max_frame_bytes
        self.stream_window_bytes = stream_window_bytes
        self.connect_timeout_s = connect_timeout_s
        self._secret = resolve_secret(cluster_secret)
        self._tls = resolve_tls(tls_cert, tls_key, tls_ca)
        self.connections_opened = 0  # for tests and metrics: how often the pool dialled
        self._pool: dict[str, ClientConnection] = {}

    # -- serving --------------------------------------------------------------------------

    async def serve(
        self, handler: Handler, *, host: str, port: int = 0, task_status: TaskStatus[str]
    ) -> None:
        try:
            listener = await listen(host, port)
        except OSError as exc:
            # socket.create_server rewrites strerror ("... (while attempting to bind on
            # address ...)"); the errno's own text says it once.
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise TransportError(f"cannot listen on {host}:{port}: {reason}") from exc
        options = ServerOptions(
            protocol_version=self.protocol_version,
            max_frame_bytes=self.max_frame_bytes,
            handshake_timeout_s=self.connect_timeout_s,
            secret=self._secret,
            tls=None if self._tls is None else self._tls.server,
        )
        try:
            async with anyio.create_task_group() as connections:
                task_status.started(_format_address(host, listener.getsockname()[1]))
                while True:
                    await anyio.wait_readable(listener)
                    while True:  # take every connection already waiting
                        try:
                            sock, peer = listener.accept()
                        except BlockingIOError:
                            break
                        except OSError as exc:  # out of descriptors, say: back off, go on
                            log.warning("accept on %s:%s failed: %s", host, port, exc)
                            await anyio.sleep(0.1)
                            break
                        tune(sock)
                        where = f"{peer[0]}:{peer[1]}"
                        connections.start_soon(serve_connection, sock, where, handler, options)
        finally:
            anyio.notify_closing(listener)
            listener.close()

    # -- calling --------------------------------------------------------------------------

    def call(
        self, address: str, path: str, payload: bytes, headers: Mapping[str, str]
    ) -> CallStream:
        async def connection() -> ClientConnection:
            return await self._connection(address)

        return TcpCall(connection, path, payload, headers, self.stream_window_bytes)

    async def _connection(self, address: str) -> ClientConnection:
        while True:
            conn = self._pool.get(address)
            if conn is None:
                return await self._dial(address)
            if not conn.ready.is_set():  # another call is dialling: share its connection
                await conn.ready.wait()
                if conn.wire is None and conn.error is not None and not conn.open_abandoned:
                    raise fresh_error(conn.error)
                continue
            if conn.alive():
                return conn
            self._forget(conn)

    async def _dial(self, address: str) -> ClientConnection:
        host, port = parse_address(address)
        conn = ClientConnection(address, host, port, self.max_frame_bytes)
        conn.on_dead = self._forget
        self._pool[address] = conn
        try:
            await conn.open(
                self.protocol_version,
                self.connect_timeout_s,
                self._secret,
                None if self._tls is None else self._tls.client,
            )
        except CallError as exc:
            conn.fail(exc)
            raise
        except BaseException:
            conn.open_abandoned = True
            conn.fail(TransportError(f"connecting to {address} was abandoned"))
            raise
        self.connections_opened += 1
        conn.ready.set()
        return conn

    def _forget(self, conn: ClientConnection) -> None:
        if self._pool.get(conn.address) is conn:
            del self._pool[conn.address]

    async def aclose(self) -> None:
        for conn in list(self._pool.values()):
            conn.fail(TransportError(f"the transport's connection to {conn.address} was closed"))
        self._pool.clear()
