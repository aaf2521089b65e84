"""The frontend's admin routes, which `dyn route` talks to.

``GET /admin/route`` shows the strategy and what it knows of each worker; ``POST
/admin/route`` switches the strategy (``{"strategy": NAME, "options": {...}}``); ``POST
/admin/route/explain`` scores every worker for ``{"text": PROMPT}`` without sending it;
``POST /admin/kv/clear`` empties every worker's prefix cache (``dyn bench --compare``
calls it between arms).
They call the processor's ``route_info``, ``set_strategy``, ``explain`` and ``clear_kv``
endpoints.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from dyn.errors import CallError, DynError, NoInstancesError
from dyn.roles.http_errors import error_body, status_for
from dyn.runtime.client import Client

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

__all__ = ["admin_routes"]


def admin_routes(processor: Client) -> list[Route]:
    from starlette.routing import Route

    async def call(endpoint: str, payload: Any) -> Response:
        from starlette.responses import JSONResponse

        try:
            async with processor.stream(endpoint, payload) as items:
                async for item in items:
                    return JSONResponse(item)
        except NoInstancesError as exc:
            return JSONResponse(error_body(503, str(exc), code="unavailable"), 503)
        except CallError as exc:
            status = status_for(exc.code)
            return JSONResponse(error_body(status, exc.message, code=exc.code), status)
        except DynError as exc:
            return JSONResponse(error_body(500, str(exc), code="internal"), 500)
        return JSONResponse(error_body(500, f"{endpoint} answered nothing"), 500)

    async def body(request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None

    async def info(request: Request) -> Response:
        return await call("route_info", {})

    async def switch(request: Request) -> Response:
        return await call("set_strategy", await body(request))

    async def explain(request: Request) -> Response:
        return await call("explain", await body(request))

    async def clear_kv(request: Request) -> Response:
        return await call("clear_kv", {})

    return [
        Route("/admin/route", info, methods=["GET"]),
        Route("/admin/route", switch, methods=["POST"]),
        Route("/admin/route/explain", explain, methods=["POST"]),
        Route("/admin/kv/clear", clear_kv, methods=["POST"]),
    ]
