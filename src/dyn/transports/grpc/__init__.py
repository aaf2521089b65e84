"""The ``grpc`` transport (grpclib over HTTP/2); its contract is ``transports/dyn.proto``.

Importing this package imports grpclib, so nothing the CLI imports at start-up may
import it; the transport registry loads it by name when a graph chooses ``grpc``.
"""

from __future__ import annotations

from dyn.transports.grpc._transport import GrpcTransport

__all__ = ["GrpcTransport"]
