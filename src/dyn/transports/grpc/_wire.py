"""The gRPC side of dyn's call protocol: the method name and the frame conversions.

The contract is ``transports/dyn.proto``; its message classes are generated into
``_proto`` (``nox -s proto``). Only the messages are generated: the service glue is
written by hand in ``_server`` and ``_client`` because it has to reach grpclib's streams
directly (cancellation, flow control), which generated stubs hide.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import betterproto2

from dyn.errors import ProtocolError, TransportError
from dyn.transports._serving import ReplyFrame
from dyn.transports.grpc._proto.dyn.v1 import CallFrame, CallRequest, End, Error

__all__ = [
    "CALL_METHOD",
    "SCHEME",
    "CallFrame",
    "CallRequest",
    "format_address",
    "frame_to_message",
    "message_kind",
    "parse_address",
]

SCHEME = "grpc"
# "/<package>.<service>/<method>" as in transports/dyn.proto.
CALL_METHOD = "/dyn.v1.Endpoint/Call"

_END = CallFrame(end=End())


def frame_to_message(frame: ReplyFrame) -> CallFrame:
    """The CallFrame that carries one of ``run_handler``'s frames."""
    kind, body, message = frame
    if kind == "data":
        assert isinstance(body, bytes)
        return CallFrame(data=body)
    if kind == "end":
        return _END
    return CallFrame(error=Error(code=str(body), message=message))


def message_kind(frame: CallFrame) -> str:
    """Which member of the ``kind`` oneof is set ("" for a frame with none)."""
    kind, _ = betterproto2.which_one_of(frame, "kind")
    return kind


def format_address(host: str, port: int) -> str:
    if ":" in host:  # an IPv6 literal needs brackets to be followed by a port
        host = f"[{host}]"
    return f"{SCHEME}://{host}:{port}"


def parse_address(address: str) -> tuple[str, int]:
    """``grpc://host:port`` → (host, port); a ProtocolError names what was wrong."""
    try:
        parts = urlsplit(address)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise TransportError(f"bad address {address!r}: {exc}") from exc
    if parts.scheme != SCHEME or not host or port is None:
        raise ProtocolError(
            f"bad address {address!r} for the grpc transport; expected grpc://HOST:PORT"
        )
    return host, port
