"""The frontend's fast path: the generation routes without starlette's layers in front.

Every other request goes through the starlette app (routing, its error middleware and
:class:`~dyn.roles.frontend_admin.AuthMiddleware`). A POST to ``/v1/completions`` or
``/v1/chat/completions`` — nearly all of a serving frontend's traffic — is checked by
the same auth object and handed to its :class:`~dyn.openai.routes.GenerationRoute`
directly: starlette's routing, exception middleware and the send wrappers they put
around every streamed chunk cost more per request than the route's own work. What a
client sees is the same either way; the generation routes answer every error
themselves, and a bug that escapes them is answered 500 as starlette's error
middleware would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from dyn.roles.frontend_admin import AuthMiddleware

__all__ = ["FastPath"]

_SERVER_ERROR = b"Internal Server Error"
_SERVER_ERROR_HEADERS = [
    (b"content-length", b"%d" % len(_SERVER_ERROR)),
    (b"content-type", b"text/plain; charset=utf-8"),
]


class FastPath:
    """``routes`` (exact path to an ASGI app, POST only) past ``auth``; the rest to ``app``."""

    def __init__(self, app: ASGIApp, routes: Mapping[str, ASGIApp], auth: AuthMiddleware):
        self._app = app
        self._routes = dict(routes)
        self._auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self._routes.get(scope["path"])
            if route is not None:
                if await self._auth.refused(scope, send):
                    return
                await _answering_bugs(route, scope, receive, send)
                return
        await self._app(scope, receive, send)


async def _answering_bugs(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    try:
        await app(scope, receive, send)
    except Exception:
        # As starlette's ServerErrorMiddleware: a 500 if nothing was sent yet (the
        # server refuses a second start otherwise), and the exception goes on to the
        # server, which logs it. Tracking the start instead would wrap every chunk's send.
        with contextlib.suppress(RuntimeError):
            start = {"type": "http.response.start", "status": 500, "headers": _SERVER_ERROR_HEADERS}
            await send(start)
            await send({"type": "http.response.body", "body": _SERVER_ERROR})
        raise
