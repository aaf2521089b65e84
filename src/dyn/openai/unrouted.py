"""Answers for requests no route takes, as OpenAI error bodies rather than plain text.

Starlette raises its ``HTTPException`` for an unknown path (404) and for a path that
exists under another method (405); an app mounts
:func:`openai_http_error` as that exception's handler, so every 4xx a client sees has
the same body as the routes' own errors, and the message says what the server has.

A path may have several routes, one per method (``GET`` and ``POST /admin/route``), and
starlette's 405 names only the methods of the first; the answer here names (in its
message and ``Allow``) the methods of every route the path matches.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from dyn.openai.errors import error_body

__all__ = ["openai_http_error"]


async def openai_http_error(request: Request, exc: Exception) -> Response:
    """The OpenAI-shaped answer for starlette's ``HTTPException`` ``exc``."""
    assert isinstance(exc, HTTPException)
    status, headers = exc.status_code, exc.headers
    asked = f"{request.method} {request.url.path}"
    if status == 404:
        code: str | None = "unknown_route"
        message = f"no route {asked}; this server has {_routes_like(request)}"
    elif status == 405:
        code = "method_not_allowed"
        allowed = _allowed_methods(request) or (exc.headers or {}).get("Allow", "")
        headers = {**(headers or {}), "Allow": allowed}
        message = f"{asked} is not allowed; {request.url.path} takes {allowed or 'no method'}"
    else:
        code, message = None, exc.detail
    body = msgspec.json.encode(error_body(status, message, code=code))
    return Response(body, status, headers, "application/json")


def _allowed_methods(request: Request) -> str:
    """Every method some route of the app takes at the request's path, sorted (only on
    a 405: a wrong method costs the walk over the routes, a right one nothing)."""
    methods: set[str] = set()
    app: Any = request.scope.get("app")
    for route in getattr(app, "routes", []):
        taken = getattr(route, "methods", None)
        if taken and route.matches(request.scope)[0] is not Match.NONE:
            methods |= set(taken)
    return ", ".join(sorted(methods))


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
