"""Answers for requests no route takes, as OpenAI error bodies rather than plain text.

Starlette raises its ``HTTPException`` for an unknown path (404) and for a path that
exists under another method (405, with ``Allow``); an app mounts
:func:`openai_http_error` as that exception's handler, so every 4xx a client sees has
the same body as the routes' own errors, and the message says what the server has.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from dyn.openai.errors import error_body

__all__ = ["openai_http_error"]


async def openai_http_error(request: Request, exc: Exception) -> Response:
    """The OpenAI-shaped answer for starlette's ``HTTPException`` ``exc``."""
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    asked = f"{request.method} {request.url.path}"
    if status == 404:
        code: str | None = "unknown_route"
        message = f"no route {asked}; this server has {_routes_like(request)}"
    elif status == 405:
        code = "method_not_allowed"
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{asked} is not allowed; {request.url.path} takes {allowed or 'no method'}"
    else:
        code, message = None, exc.detail
    body = msgspec.json.encode(error_body(status, message, code=code))
    return Response(body, status, exc.headers, "application/json")


def _routes_like(request: Request) -> str:
    """The app's routes under the same first path segment as the request's (``/v1``),
    or all of them when none is."""
    routes: list[tuple[str, str]] = []
    app: Any = request.scope.get("app")
    for route in getattr(app, "routes", []):
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            continue
        methods = sorted(getattr(route, "methods", None) or {"GET"})
        method = next((m for m in methods if m != "HEAD"), methods[0])
        routes.append((method, path.replace(":path}", "}")))
    prefix = "/" + request.url.path.lstrip("/").partition("/")[0]
    alike = [r for r in routes if r[1] == prefix or r[1].startswith(prefix + "/")]
    shown = alike if prefix != "/" and alike else routes
    return ", ".join(f"{method} {path}" for method, path in shown) or "no routes"
