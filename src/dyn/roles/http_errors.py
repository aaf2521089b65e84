"""OpenAI-style error bodies and the HTTP status of each wire error code."""

from __future__ import annotations

from typing import Any

__all__ = ["STATUS_BY_CODE", "error_body", "status_for"]

STATUS_BY_CODE: dict[str, int] = {
    "bad_request": 400,
    "unauthorized": 401,
    "not_found": 404,
    "payload_too_large": 413,
    "overloaded": 429,
    "cancelled": 499,
    "internal": 500,
    "protocol": 502,
    "unavailable": 503,
    "deadline_exceeded": 504,
}

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def status_for(code: str) -> int:
    return STATUS_BY_CODE.get(code, 500)


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
