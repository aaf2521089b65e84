"""The ``grpc`` transport: dyn calls as gRPC server-streaming RPCs over HTTP/2 (grpclib).

All calls to one peer share one pooled connection, many streams on it. The wire contract
is ``transports/dyn.proto``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

import anyio
from anyio.abc import TaskStatus
from grpclib.config import Configuration

from dyn.errors import TransportError
from dyn.transports._auth import resolve_secret
from dyn.transports._tls import resolve_tls
from dyn.transports.base import PROTOCOL_VERSION, CallStream, Handler, Transport
from dyn.transports.grpc._client import GrpcCall, PooledChannel
from dyn.transports.grpc._server import EndpointService, TrackingServer, bind
from dyn.transports.grpc._wire import CallRequest, format_address, parse_address

__all__ = ["GrpcTransport"]

# How long a stopping server waits for cancelled handlers to unwind before it closes
# their connections anyway.
SHUTDOWN_GRACE_S = 5.0
# What a server may send on one call before the caller reads it: HTTP/2's smallest
# window. grpclib's default of 4 MiB holds some 100,000 small items (tokens), which is no
# backpressure at all and a lot of wasted work when a call is cancelled. The connection
# window keeps grpclib's default, so many calls can stream at once.
STREAM_WINDOW = 2**16

_CLIENT_CONFIG = Configuration(http2_stream_window_size=STREAM_WINDOW)


class GrpcTransport(Transport):
    """Options: ``cluster_secret`` (when set, every call carries a token made with it and
    the server refuses calls without a valid one), ``tls_cert``, ``tls_key``, ``tls_ca``
    (all three turn on mutual TLS, see ``dyn.transports._tls``; some but not all:
    ``ConfigError``). A launch passes these four from its settings
    (:class:`dyn.settings.TransportSecurity`); an option not given falls back to its
    environment variable, for programs that build a transport themselves.
    """

    name: ClassVar[str] = "grpc"

    def __init__(
        self,
        *,
        protocol_version: int = PROTOCOL_VERSION,
        cluster_secret: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_ca: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(protocol_version=protocol_version, **options)
        self._secret = resolve_secret(cluster_secret)
        self._tls = resolve_tls(tls_cert, tls_key, tls_ca, alpn=["h2"])  # HTTP/2 over TLS
        self._channels: dict[str, PooledChannel] = {}

    async def serve(
        self, handler: Handler, *, host: str, port: int = 0, task_status: TaskStatus[str]
    ) -> None:
        try:
            sock = await bind(host, port)
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise TransportError(f"cannot listen on {host}:{port}: {reason}") from exc
        address = format_address(host, sock.getsockname()[1])
        service = EndpointService(handler, self.protocol_version, address, self._secret)
        server = TrackingServer([service])
        try:
            await server.start(sock=sock, ssl=None if self._tls is None else self._tls.server)
        except BaseException:
            sock.close()
            raise
        try:
            task_status.started(address)
            await anyio.sleep_forever()
        finally:
            server.close()  # stop listening and cancel the calls in flight
            with anyio.move_on_after(SHUTDOWN_GRACE_S, shield=True):
                await server.wait_closed()
            # Callers mid-stream then see the connection drop (a TransportError).
            server.close_connections()

    def call(
        self, address: str, path: str, payload: bytes, headers: Mapping[str, str]
    ) -> CallStream:
        request = CallRequest(
            path=path,
            headers=dict(headers),
            payload=payload,
            protocol_version=self.protocol_version,
        )
        return GrpcCall(address, request, self._channel, self._secret, self._tls is not None)

    def _channel(self, address: str) -> PooledChannel:
        # grpclib reconnects a Channel whose connection was lost on its next request, so
        # a restarted server is reached again through the same pooled Channel.
        channel = self._channels.get(address)
        if channel is None:
            host, port = parse_address(address)
            channel = self._channels[address] = PooledChannel(
                host,
                port,
                config=_CLIENT_CONFIG,
                ssl=None if self._tls is None else self._tls.client,
            )
        return channel

    async def aclose(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            channel.close()
