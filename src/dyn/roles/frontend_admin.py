"""The frontend's admin routes, which `dyn route` talks to.

``GET /admin/route`` shows the strategy and what it knows of each worker; ``POST
/admin/route`` switches the strategy (``{"strategy": NAME, "options": {...}}``); ``POST
/admin/route/explain`` scores every worker for ``{"text": PROMPT}`` without sending it;
``POST /admin/kv/clear`` empties every worker's prefix cache (``dyn bench --compare``
calls it between arms). ``GET /admin/status`` lists every role instance of the namespace
(from discovery) with what is cheap to know of its health; it is mounted on every
frontend, with or without a processor. An instance that the frontend's clients or any
processor's client has ejected for failing calls shows as ``ejected``, with the seconds
of back-off left in ``ejected_s``, and each row's ``metrics_url`` is where its process
serves Prometheus metrics (one page per process, shared by the roles it hosts; None
for a role started by a program that serves none).
They call the processor's ``route_info``, ``set_strategy``, ``explain`` and ``clear_kv``
endpoints.

:class:`AuthMiddleware` guards the app: with an API key every route but ``/health`` and
``/metrics`` (probes and scrapers) needs ``Authorization: Bearer <key>``; the admin routes
and the dashboard (``/dashboard``, :mod:`dyn.roles.frontend_dashboard`) need the admin
token instead, and are refused outright on a frontend bound beyond loopback that has
none. A browser cannot send a bearer header when it opens a page, so it presents the
token once as ``/dashboard?token=TOKEN``: the answer sets the token in an HttpOnly,
SameSite=Strict cookie (named after the frontend's port) and redirects to
``/dashboard``. The cookie is accepted on GET requests only, so the page can read the
admin routes but a cookie alone never changes anything (switching the strategy, clearing
caches still needs the header).
"""

from __future__ import annotations

import hmac
import json
import os
import time
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import anyio
import msgspec

from dyn.discovery.base import Instance
from dyn.errors import DynError, TransportError
from dyn.observability.metrics_server import METRICS_URL_KEY
from dyn.openai.errors import call_error_body, client_error, error_body
from dyn.routing.base import RouteRequest
from dyn.runtime.client import Client
from dyn.settings import ADMIN_TOKEN_ENV

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route
    from starlette.types import ASGIApp, Receive, Scope, Send

    from dyn.roles.frontend import Frontend

__all__ = ["AuthMiddleware", "admin_routes", "collect_status", "status_route"]

_OPEN_PATHS = frozenset({"/health", "/metrics"})
# A status page must answer even when the processor is wedged.
STATUS_CALL_TIMEOUT_S = 2.0


def admin_routes(processor: Client) -> list[Route]:
    from starlette.routing import Route

    async def call(endpoint: str, payload: Any, instance_id: str | None = None) -> Response:
        from starlette.responses import JSONResponse

        route = None
        if instance_id is not None:
            route = RouteRequest(request_id=f"{endpoint}-{instance_id}", instance_id=instance_id)
        try:
            async with processor.stream(endpoint, payload, route=route) as items:
                async for item in items:
                    return JSONResponse(item)
        except DynError as exc:
            error = client_error(exc)
            return JSONResponse(call_error_body(error), error.http_status)
        return JSONResponse(error_body(500, f"{endpoint} answered nothing"), 500)

    async def body(request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None

    async def info(request: Request) -> Response:
        return await call("route_info", {})

    async def switch(request: Request) -> Response:
        payload = await body(request)
        replicas = processor.instances("set_strategy")
        if len(replicas) < 2:
            return await call("set_strategy", payload)
        # Every processor replica routes this frontend's share (or another's) of the
        # traffic: each must switch, or the graph would route with two strategies.
        replies = [
            await call("set_strategy", payload, instance.instance_id) for instance in replicas
        ]
        failed = [reply for reply in replies if reply.status_code != 200]
        return (failed or replies)[0]

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


def status_route(frontend: Frontend) -> Route:
    from starlette.routing import Route

    async def status(request: Request) -> Response:
        from starlette.responses import JSONResponse

        try:
            return JSONResponse(await collect_status(frontend))
        except DynError as exc:
            # Whatever failed, this frontend cannot tell the status now: 503, ask again.
            error = TransportError(str(exc))
            return JSONResponse(call_error_body(error), error.http_status)

    return Route("/admin/status", status, methods=["GET"])


async def collect_status(frontend: Frontend) -> dict[str, Any]:
    """One row per role instance: the frontend itself, then what discovery lists."""
    info = frontend.info
    now = time.time()
    admission = frontend.admission
    rows: list[dict[str, Any]] = [
        {
            "component": info.component,
            "replica": info.replica,
            "instance_id": info.instance_id,
            "node": info.node,
            "host": frontend.runtime.host,
            "pid": os.getpid(),
            "address": frontend.url,
            # The page of this frontend's process (None if whoever started it serves none).
            "metrics_url": frontend.runtime.metadata.get(METRICS_URL_KEY),
            "state": "draining" if admission.draining else "healthy",
            "ejected_s": None,
            "reason": None,
            "uptime_s": now - frontend.started_at,
            "in_flight": admission.active,
            "kv_usage": None,
        }
    ]
    instances = await frontend.runtime.discovery.snapshot(f"{info.namespace}/")
    # A component registers one key per endpoint; a role instance is one row.
    seen: dict[tuple[str, str], Instance] = {}
    for instance in instances:
        seen.setdefault((instance.component, instance.instance_id), instance)
    workers, ejected = await _processor_view(frontend.processor)
    health = await _probe_all(frontend, list(seen.values()))
    for instance_id, seconds in frontend.ejected().items():
        ejected[instance_id] = max(seconds, ejected.get(instance_id, 0.0))
    for instance in sorted(seen.values(), key=lambda i: (i.component, i.replica, i.instance_id)):
        stats = workers.get(instance.instance_id, {})
        started = instance.metadata.get("started_at")
        left = ejected.get(instance.instance_id)
        rows.append(
            {
                "component": instance.component,
                "replica": instance.replica,
                "instance_id": instance.instance_id,
                "node": instance.node,
                "host": instance.host,
                "pid": instance.pid,
                "address": instance.address,
                "metrics_url": instance.metadata.get(METRICS_URL_KEY),
                # What the instance answers itself (healthy, starting, draining), or
                # unhealthy when it does not; callers may still skip it (ejected).
                "state": _state(health.get(instance.instance_id, {}), left),
                "reason": health.get(instance.instance_id, {}).get("reason"),
                "ejected_s": None if left is None else round(left, 1),
                "uptime_s": now - started if isinstance(started, (int, float)) else None,
                "in_flight": stats.get("in_flight", stats.get("running")),
                "kv_usage": _kv_usage(stats),
            }
        )
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["component"]] = counts.get(row["component"], 0) + 1
    for row in rows:
        several = counts[row["component"]] > 1 or row["replica"] > 0
        row["role"] = f"{row['component']}[{row['replica']}]" if several else row["component"]
    return {"namespace": info.namespace, "time": now, "instances": rows}


# How long one instance may take to say how it is before it counts as unhealthy.
HEALTH_TIMEOUT_S = 1.0


async def _probe_all(frontend: Frontend, instances: list[Instance]) -> dict[str, dict[str, Any]]:
    """Every instance's own answer to a health call, asked all at once."""
    answers: dict[str, dict[str, Any]] = {}

    async def probe(instance: Instance) -> None:
        answers[instance.instance_id] = await frontend.runtime.probe_health(
            instance, HEALTH_TIMEOUT_S
        )

    async with anyio.create_task_group() as tasks:
        for instance in instances:
            tasks.start_soon(probe, instance)
    return answers


def _state(health: dict[str, Any], ejected_s: float | None) -> str:
    state = str(health.get("state", "unhealthy"))
    if state == "healthy" and ejected_s is not None:
        return "ejected"
    return state


async def _processor_view(
    processor: Client | None,
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """What the processors know of each worker, and whom their clients eject.

    Every processor instance is asked (each has its own client, so its own ejections);
    the worker stats of the first to answer are kept. Nothing if there is no processor,
    and what has come in when the time is up.
    """
    workers: dict[str, dict[str, Any]] = {}
    ejected: dict[str, float] = {}
    if processor is None:
        return workers, ejected

    async def ask(instance_id: str) -> None:
        route = RouteRequest(request_id=f"status-{instance_id}", instance_id=instance_id)
        try:
            async with processor.stream("route_info", {}, route=route) as items:
                async for item in items:
                    if not workers:
                        workers.update(item.get("workers") or {})
                    for worker, left in (item.get("ejected") or {}).items():
                        ejected[worker] = max(float(left), ejected.get(worker, 0.0))
                    return
        except DynError:
            pass  # the status still lists every role; only the load columns stay empty

    with anyio.move_on_after(STATUS_CALL_TIMEOUT_S):
        async with anyio.create_task_group() as tasks:
            for instance in processor.instances("route_info"):
                tasks.start_soon(ask, instance.instance_id)
    return workers, ejected


def _kv_usage(stats: dict[str, Any]) -> float | None:
    active, total = stats.get("active_blocks"), stats.get("total_blocks")
    if isinstance(active, (int, float)) and isinstance(total, (int, float)) and total > 0:
        return float(active) / float(total)
    return None


class AuthMiddleware:
    """Checks the bearer token of every HTTP request before the app sees it."""

    def __init__(
        self, app: ASGIApp, *, api_key: str | None, admin_token: str | None, loopback: bool
    ) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.admin_token = admin_token.encode() if admin_token else None
        self.loopback = loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/dashboard" and await self._token_login(scope, send):
            return
        if not await self.refused(scope, send):
            await self.app(scope, receive, send)

    async def _token_login(self, scope: Scope, send: Send) -> bool:
        """``/dashboard?token=TOKEN``: keep a right token in a cookie and redirect to the
        bare page (the token leaves the address bar and history); whether it answered."""
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = (query.get("token") or [None])[0]
        if given is None or self.admin_token is None:
            return False
        if not hmac.compare_digest(given.encode(), self.admin_token):
            return False  # refused below with the usual 401
        cookie = SimpleCookie()
        name = _cookie_name(scope)
        cookie[name] = given
        cookie[name]["httponly"] = True
        cookie[name]["samesite"] = "Strict"
        cookie[name]["path"] = "/"
        if scope.get("scheme") == "https":
            cookie[name]["secure"] = True
        headers = [
            (b"location", b"/dashboard"),
            (b"set-cookie", cookie[name].OutputString().encode("latin-1")),
            (b"cache-control", b"no-store"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 303, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return True

    async def refused(self, scope: Scope, send: Send) -> bool:
        """Answer an HTTP request whose token does not pass; whether it was refused."""
        refusal = self._refusal(scope)
        if refusal is None:
            return False
        status, message = refusal
        body = msgspec.json.encode(error_body(status, message, code="invalid_api_key"))
        headers = [(b"content-type", b"application/json")]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return True

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        given = _bearer(scope)
        path = scope["path"]
        if path.startswith("/admin/") or path == "/dashboard" or path.startswith("/dashboard/"):
            if self.admin_token is None:
                if self.loopback:
                    return None
                return 403, (
                    "admin routes and the dashboard are off on a frontend bound beyond "
                    f"loopback; set the frontend's admin_token (or {ADMIN_TOKEN_ENV}) to use them"
                )
            if given is None and scope.get("method") in ("GET", "HEAD"):
                given = _cookie(scope, _cookie_name(scope))
            if given is None or not hmac.compare_digest(given, self.admin_token):
                if path.startswith("/dashboard"):
                    return 401, "the dashboard needs the admin token: open /dashboard?token=TOKEN"
                return 401, "admin routes need 'Authorization: Bearer <admin token>'"
            return None
        if self.api_key is None:
            return None
        if given is None or not hmac.compare_digest(given, self.api_key):
            return 401, "missing or wrong API key; send 'Authorization: Bearer <key>'"
        return None


def _cookie_name(scope: Scope) -> str:
    # Browsers share cookies across a host's ports: one name per port keeps two graphs
    # on one machine from overwriting each other's token.
    server = scope.get("server")
    port = server[1] if server and server[1] is not None else 0
    return f"dyn_admin_{port}"


def _cookie(scope: Scope, name: str) -> bytes | None:
    for header, value in scope["headers"]:
        if header == b"cookie":
            jar = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except CookieError:
                continue
            if name in jar:
                return jar[name].value.encode("latin-1")
    return None


def _bearer(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else None
    return None
