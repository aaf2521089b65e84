"""OpenAI-style error bodies, and the one exception the routes raise to answer with one.

A dyn error's HTTP status is its class's ``http_status`` and its body's ``code`` its wire
code (:mod:`dyn.errors`); :func:`client_error` picks the call error a client is answered
with for any :class:`~dyn.errors.DynError`.
"""

from __future__ import annotations

from typing import Any

from dyn.errors import CallError, DynError, NoInstancesError, RemoteError, TransportError

__all__ = ["RETRY_AFTER_S", "ApiError", "call_error_body", "client_error", "error_body"]

# Clients (and the openai package's retry loop) honour this on 429 and 503.
RETRY_AFTER_S = "1"

# The body's ``type`` for each status, as OpenAI's API names them.
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class ApiError(DynError):
    """Answer with ``status`` and an OpenAI error body naming ``param`` and ``code``."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    @classmethod
    def of(cls, error: CallError) -> ApiError:
        """Answer as ``error`` would reach a client: its class's status and code."""
        return cls(error.http_status, error.message, param=error.param, code=error.code)


def client_error(exc: DynError) -> CallError:
    """The call error a client is answered with for ``exc``.

    A call error stays itself; no live instance is ``unavailable`` (503: another frontend,
    or a retry, may find one); any other dyn error is ``internal`` (500).
    """
    if isinstance(exc, CallError):
        return exc
    if isinstance(exc, NoInstancesError):
        return TransportError(str(exc))
    return RemoteError(str(exc))


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """``{"error": {message, type, param, code}}`` as OpenAI's API returns it."""
    return {
        "error": {
            "message": message,
            "type": _TYPE_BY_STATUS.get(status, "internal_error"),
            "param": param,
            "code": code,
        }
    }


def call_error_body(error: CallError) -> dict[str, Any]:
    """The body a client is answered with for ``error``, whose status is its ``http_status``."""
    return error_body(error.http_status, error.message, param=error.param, code=error.code)
