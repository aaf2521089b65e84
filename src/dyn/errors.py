"""The one error root of dyn and its tree.

Expected failures raise a subclass of :class:`DynError`; the CLI prints its message on one
line and exits non-zero. Anything else is a bug and keeps its traceback. Foreign
exceptions are mapped at the boundary with ``raise ... from exc``.

::

    DynError
    ├── SpecError               a graph file or override is invalid (file, line, field)
    ├── ConfigError             an environment variable or option is invalid (names it)
    ├── PluginError             an unknown plugin name or an import path that fails
    ├── DiscoveryError          the discovery backend cannot be reached or used
    ├── RoutingError            no instance to route to, or a strategy refuses
    │   └── NoInstancesError    the target component has no live instance
    ├── LaunchError             a role failed to start, or a run cannot be found
    └── CallError               a call to an endpoint failed (carries a wire ``code``)
        ├── TransportError      the connection broke or could not be made
        │   └── ProtocolError   the peer speaks another protocol or sent bad frames
        ├── RemoteError         the handler raised; ``code`` and message come from it
        ├── BadRequestError     the request payload is invalid
        ├── OverloadedError     the server refuses more work for now (retry later)
        ├── DeadlineExceeded    the request's deadline passed
        └── CancelledByPeer     the other side cancelled the call
"""

from __future__ import annotations

__all__ = [
    "BadRequestError",
    "CallError",
    "CancelledByPeer",
    "ConfigError",
    "DeadlineExceeded",
    "DiscoveryError",
    "DynError",
    "LaunchError",
    "NoInstancesError",
    "OverloadedError",
    "PluginError",
    "ProtocolError",
    "RemoteError",
    "RoutingError",
    "SpecError",
    "TransportError",
    "call_error_from_wire",
]


class DynError(Exception):
    """Root of every error dyn raises on purpose."""


class SpecError(DynError):
    """A graph spec is invalid. ``problems`` holds one line per problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class ConfigError(DynError):
    """An environment variable or a component's option is missing or invalid; the
    message names it."""


class PluginError(DynError):
    """A plugin name is unknown or its import path cannot be loaded."""


class DiscoveryError(DynError):
    """The discovery backend failed."""


class RoutingError(DynError):
    """A routing strategy cannot choose an instance."""


class NoInstancesError(RoutingError):
    """The target component has no live instance."""


class LaunchError(DynError):
    """A launcher could not start or find a run."""


class CallError(DynError):
    """A call to an endpoint failed. ``code`` is the wire error code."""

    code = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class TransportError(CallError):
    """The connection broke, was refused, or timed out."""

    code = "unavailable"


class ProtocolError(TransportError):
    """The peer speaks another protocol version or sent a malformed frame."""

    code = "protocol"


class RemoteError(CallError):
    """The remote handler raised an exception."""

    code = "internal"


class BadRequestError(CallError):
    """The request payload is invalid."""

    code = "bad_request"


class OverloadedError(CallError):
    """The server is at its bound of requests in flight and queued; retry later or elsewhere."""

    code = "overloaded"


class DeadlineExceeded(CallError):
    """The request's deadline passed before it completed."""

    code = "deadline_exceeded"


class CancelledByPeer(CallError):
    """The other side cancelled the call."""

    code = "cancelled"


_BY_CODE: dict[str, type[CallError]] = {
    cls.code: cls
    for cls in (
        TransportError,
        ProtocolError,
        BadRequestError,
        OverloadedError,
        DeadlineExceeded,
        CancelledByPeer,
    )
}


def call_error_from_wire(code: str, message: str) -> CallError:
    """Rebuild the typed error a handler raised from its wire ``code`` and message."""
    cls = _BY_CODE.get(code, RemoteError)
    return cls(message, code=code)
