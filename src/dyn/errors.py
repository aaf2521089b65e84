"""The one error root of dyn and its tree.

Expected failures raise a subclass of :class:`DynError`; the CLI prints its message on one
line and exits non-zero. Anything else is a bug and keeps its traceback. Foreign
exceptions are mapped at the boundary with ``raise ... from exc``.

::

    DynError
    ├── SpecError                 a graph file or override is invalid (file, line, field)
    ├── ConfigError               an environment variable or option is invalid (names it)
    ├── PluginError               an unknown plugin name or an import path that fails
    ├── DiscoveryError            the discovery backend cannot be reached or used
    ├── RoutingError              no instance to route to, or a strategy refuses
    │   └── NoInstancesError      the target component has no live instance
    ├── LaunchError               a role failed to start, or a run cannot be found
    └── CallError                 a call to an endpoint failed (wire ``code``, ``http_status``)
        ├── TransportError        unavailable: this instance cannot serve it, another may  503
        │   └── ProtocolError     protocol: the peer speaks another protocol or bad frames 502
        ├── RemoteError           internal: the handler failed (a bug), or an unknown code 500
        ├── BadRequestError       bad_request: the request payload is invalid              400
        ├── UnauthorizedError     unauthorized: the caller's credentials are refused       401
        ├── NotFoundError         not_found: no endpoint with that path on the server      404
        ├── PayloadTooLargeError  payload_too_large: the request is larger than allowed    413
        ├── OverloadedError       overloaded: the server refuses more work for now         429
        ├── DeadlineExceeded      deadline_exceeded: the request's deadline passed         504
        └── CancelledByPeer       cancelled: the other side cancelled the call             499

Every code an error frame carries belongs to exactly one ``CallError`` class (its
``code``), and :func:`call_error_from_wire` rebuilds that class from the code; code outside
this module tells errors apart by class, never by comparing codes. A code this version has
no class for (sent by a newer peer) arrives as a :class:`RemoteError` that keeps it.

A call error may name the request field at fault (``param``: ``max_tokens``,
``response_format``), which the frontend puts in the OpenAI error body. It crosses the
wire inside the code, as ``<code>;param=<field>`` (:func:`wire_code`), so that every
transport's error frame stays ``(code, message)``; a peer older than this suffix reads
such a code as an unknown one (a :class:`RemoteError`, 500).
"""

from __future__ import annotations

from typing import ClassVar

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
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PluginError",
    "ProtocolError",
    "RemoteError",
    "RoutingError",
    "SpecError",
    "TransportError",
    "UnauthorizedError",
    "as_call_error",
    "call_error_from_wire",
    "wire_code",
]

# What separates a wire code from the field it names: ``bad_request;param=max_tokens``.
_PARAM = ";param="


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
    """A call to an endpoint failed; raise one of the subclasses, never this class.

    ``code`` is what an error frame carries, ``http_status`` what the frontend answers a
    client with. Both belong to the class: only a :class:`RemoteError` rebuilt from a code
    this version does not know carries another code.
    """

    code: str = "internal"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, *, param: str | None = None) -> None:
        if type(self) is CallError:
            raise TypeError("raise a subclass of CallError, which names the wire code")
        super().__init__(message)
        self.message = message
        # The request field at fault, if one is (an OpenAI error body's ``param``).
        self.param = param


class TransportError(CallError):
    """This instance cannot serve the call, another may: the connection broke, was refused
    or timed out, or the server withdrew the endpoint or lost what it needs to serve it (an
    upstream). Callers count it against the instance and try another."""

    code = "unavailable"
    http_status = 503


class ProtocolError(TransportError):
    """The peer speaks another protocol version or sent a malformed frame."""

    code = "protocol"
    http_status = 502


class RemoteError(CallError):
    """The remote handler failed (a bug), or a newer peer sent a code this version has no
    class for; ``code`` then keeps that code."""

    code = "internal"
    http_status = 500


class BadRequestError(CallError):
    """The request payload is invalid."""

    code = "bad_request"
    http_status = 400


class NotFoundError(CallError):
    """The server has no endpoint with that path (a caller with a stale or wrong path)."""

    code = "not_found"
    http_status = 404


class UnauthorizedError(CallError):
    """The caller's credentials (an API key, a token) are missing or refused."""

    code = "unauthorized"
    http_status = 401


class PayloadTooLargeError(CallError):
    """The request is larger than the server accepts."""

    code = "payload_too_large"
    http_status = 413


class OverloadedError(CallError):
    """The server is at its bound of requests in flight and queued; retry later or elsewhere."""

    code = "overloaded"
    http_status = 429


class DeadlineExceeded(CallError):
    """The request's deadline passed before it completed."""

    code = "deadline_exceeded"
    http_status = 504


class CancelledByPeer(CallError):
    """The other side cancelled the call."""

    code = "cancelled"
    http_status = 499  # nginx's "client closed request"; no standard status says it


_CLASS_BY_CODE: dict[str, type[CallError]] = {
    cls.code: cls
    for cls in (
        TransportError,
        ProtocolError,
        RemoteError,
        BadRequestError,
        UnauthorizedError,
        NotFoundError,
        PayloadTooLargeError,
        OverloadedError,
        DeadlineExceeded,
        CancelledByPeer,
    )
}


def wire_code(error: CallError) -> str:
    """The code ``error`` crosses the wire with: its ``code``, and its ``param`` if any."""
    return error.code if error.param is None else f"{error.code}{_PARAM}{error.param}"


def call_error_from_wire(code: str, message: str) -> CallError:
    """Rebuild the typed error a handler raised from its wire ``code`` and message."""
    known, _, param = code.partition(_PARAM)
    cls = _CLASS_BY_CODE.get(known)
    if cls is not None:
        return cls(message, param=param or None)
    error = RemoteError(message)
    error.code = code  # kept, so that a hop that passes it on sends what it received
    return error


def as_call_error(exc: BaseException) -> CallError:
    """The error a handler's failure ``exc`` reaches its caller as.

    A call error stays itself; a routing failure means this server cannot serve the call
    now, so the caller may try another (``TransportError``); any other failure is a
    ``RemoteError`` naming a foreign exception's type.
    """
    if isinstance(exc, CallError):
        return exc
    if isinstance(exc, RoutingError):
        return TransportError(str(exc))
    if isinstance(exc, DynError):
        return RemoteError(str(exc))
    return RemoteError(f"{type(exc).__name__}: {exc}")
