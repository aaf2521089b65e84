"""The HTTP frontend role: starlette routes served by uvicorn inside the runtime.

Routes from the graph (``routes: {/generate: middle/generate}``) take a JSON body, call
the endpoint, and stream each item back as one line of text; a GET sends ``{}`` (to read
state, as ``/admin/prefill_queue`` does in graphs/disagg.yaml). ``/health`` is 503 until
every route's target has a live instance; ``/metrics`` is Prometheus text.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import msgspec

from dyn.errors import CallError, DynError, LaunchError, RemoteError
from dyn.net import is_loopback
from dyn.observability.metrics import FrontendMetrics
from dyn.openai.errors import client_error, error_body
from dyn.roles.frontend_config import FrontendConfig, check_routes
from dyn.runtime.client import Client, ResponseStream
from dyn.runtime.component import Component, non_default_fields

if TYPE_CHECKING:
    import uvicorn
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import ASGIApp

    from dyn.graph.roles import ConfigProblem, Wiring

__all__ = ["Frontend"]

RETRY_AFTER_S = "1"


class Frontend(Component[FrontendConfig]):
    """Serves HTTP and calls the components the graph wires to it."""

    open_dependencies: ClassVar[bool] = True
    serves_http: ClassVar[bool] = True
    admin_routes: ClassVar[bool] = True
    port_field: ClassVar[str | None] = "port"
    scales_with_cores: ClassVar[bool] = True

    @classmethod
    def route_targets(cls, config: FrontendConfig) -> dict[str, str]:
        return dict(config.routes)

    @classmethod
    def replicated_config(cls, config: FrontendConfig) -> FrontendConfig:
        return msgspec.structs.replace(config, reuse_port=True)

    @classmethod
    def admin_token_required(cls, config: FrontendConfig) -> bool:
        # Beyond loopback the admin routes only answer to a token (frontend_admin).
        return not config.admin_token and not is_loopback(config.host)

    @classmethod
    def check_wiring(cls, config: FrontendConfig, wiring: Wiring) -> list[ConfigProblem]:
        return check_routes(config, wiring)

    @classmethod
    def config_summary(cls, config: FrontendConfig) -> list[str]:
        lines = [f"listen http://{config.host}:{config.port}"]
        lines.extend(f"route {path} → {target}" for path, target in config.routes.items())
        changed = non_default_fields(config)
        for key in ("host", "port", "routes", "reuse_port"):
            changed.pop(key, None)
        return lines + [f"{key} = {value!r}" for key, value in changed.items()]

    async def start(self) -> None:
        self.metrics = FrontendMetrics(self.runtime.registry)
        self.started_at = time.time()
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._served = anyio.Event()  # set once run() has stopped serving
        self._socket = self._bind()
        self.port = self._socket.getsockname()[1]
        self.url = f"http://{_url_host(self.config.host)}:{self.port}"
        by_name = dict(self.clients)  # a route may name the slot or the component
        for client in self.clients.values():
            by_name.setdefault(client.component, client)
        self._targets: dict[str, tuple[Client, str]] = {}
        for path, target in self.config.routes.items():
            component, _, endpoint = target.partition("/")
            self._targets[path] = (by_name[component], endpoint)
        self.processor = by_name[self.config.openai] if self.config.openai else None
        from dyn.openai.admission import Admission

        config = self.config
        self.admission = Admission(config.max_inflight, config.max_queued, config.queue_timeout_s)

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.config.reuse_port:
            # The replicas of this frontend (one per process) accept on one port; the
            # kernel spreads connections over them. The launcher checked the port was free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self.config.host, self.config.port))
        except OSError as exc:
            sock.close()
            raise LaunchError(
                f"frontend {self.info.component!r} cannot listen on "
                f"{self.config.host}:{self.config.port}: {exc.strerror}; "
                "choose another port with --port"
            ) from exc
        # Not listening yet: run() listens (see there).
        sock.setblocking(False)
        return sock

    def ready(self) -> bool:
        return self._server is not None and self._server.started

    def ejected(self) -> dict[str, float]:
        """Instances the frontend's own clients have ejected, with seconds of back-off left."""
        ejected: dict[str, float] = {}
        for client in self.clients.values():
            for instance_id, left in client.ejected().items():
                ejected[instance_id] = max(left, ejected.get(instance_id, 0.0))
        return ejected

    async def run(self) -> None:
        import uvicorn

        config = uvicorn.Config(
            self.build_app(),
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=30,
        )
        self._server = server = _Server(config)
        try:
            if self.config.reuse_port:
                # A replica that shares the port joins it only once the roles it calls
                # have instances: until then the others take the connections, which it
                # could only answer with a 503. A lone frontend serves at once and says
                # on /health what it waits for.
                for client in self.clients.values():
                    await client.wait_for_instances(endpoint=None)
            self._socket.listen(2048)
            self.log.info("listening on %s", self.url)
            await server.serve(sockets=[self._socket])
        finally:
            # Cancelled before uvicorn shut down: close its listeners first, so the event
            # loop stops watching the socket before it is closed (a stale watch on a
            # reused file descriptor leaves the next server in this loop deaf).
            for listener in getattr(server, "servers", []):
                listener.close()
            self._socket.close()
            self._served.set()

    async def drain(self) -> None:
        """Stop accepting, let the requests in flight finish, then return."""
        server = self._server
        if server is None:
            return
        # New generations get 503 (clients retry elsewhere) while admitted ones finish;
        # only then does the server stop listening.
        await self.admission.drain()
        server.should_exit = True
        # uvicorn notices should_exit on its next tick, lets connections finish, and then
        # serve() returns in run().
        with anyio.move_on_after(server.config.timeout_graceful_shutdown or 30):
            await self._served.wait()

    # -- the ASGI app --------------------------------------------------------------------

    def build_app(self) -> ASGIApp:
        from starlette.applications import Starlette
        from starlette.routing import Route

        from dyn.roles.frontend_admin import AuthMiddleware, status_route
        from dyn.roles.frontend_fastpath import FastPath

        routes = [
            Route("/health", self._health, methods=["GET"]),
            Route("/metrics", self._metrics_route, methods=["GET"]),
        ]
        routes += [
            Route(path, self._stream_route, methods=["GET", "POST"]) for path in self._targets
        ]
        fast: dict[str, ASGIApp] = {}
        if self.processor is not None:
            from dyn.openai.backend import ClientBackend
            from dyn.openai.metrics import OpenAIMetrics
            from dyn.openai.protocol import ModelInfo
            from dyn.openai.routes import GenerationRoute, build_openai_routes
            from dyn.roles.frontend_admin import admin_routes

            model = self.model
            info = ModelInfo(
                id=model.name if model else "dyn",
                max_model_len=model.max_model_len if model else 8192,
                created=int(time.time()),
            )
            openai = build_openai_routes(
                ClientBackend(self.processor),
                info,
                OpenAIMetrics(self.runtime.registry, self.metrics),
                max_body_bytes=self.config.max_body_bytes,
                admission=self.admission,
                request_timeout_s=self.config.request_timeout_s,
            )
            # A graph route of the same path comes first in starlette's order: it wins.
            fast = {
                r.path: r.endpoint
                for r in openai
                if isinstance(r.endpoint, GenerationRoute) and r.path not in self._targets
            }
            routes += openai
            routes += admin_routes(self.processor)
        routes.append(status_route(self))
        from dyn.roles.frontend_dashboard import dashboard_routes

        routes += dashboard_routes(self)
        from starlette.middleware import Middleware

        # The launch's settings fill in what the graph leaves unset.
        api_key = self.config.api_key or self.run_settings.api_key or None
        admin_token = self.config.admin_token or self.run_settings.admin_token or None
        loopback = is_loopback(self.config.host)
        auth = Middleware(
            AuthMiddleware, api_key=api_key, admin_token=admin_token, loopback=loopback
        )
        from starlette.exceptions import HTTPException

        from dyn.openai.unrouted import openai_http_error

        # Unknown paths and wrong methods get the same error bodies as the routes' own.
        handlers = {HTTPException: openai_http_error}
        app = Starlette(routes=routes, middleware=[auth], exception_handlers=handlers)
        # The fast path checks requests with the same rules, before anything else runs.
        check = AuthMiddleware(app, api_key=api_key, admin_token=admin_token, loopback=loopback)
        return FastPath(app, fast, check)

    def health(self) -> tuple[bool, dict[str, list[str]]]:
        """Whether every route's target has an instance, and the instances by target."""
        instances: dict[str, list[str]] = {}
        for client, endpoint in self._targets.values():
            key = f"{client.component}/{endpoint}"
            instances[key] = [i.instance_id for i in client.instances(endpoint)]
        return all(instances.values()), instances

    async def _health(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        healthy, instances = self.health()
        body = {"status": "healthy" if healthy else "unavailable", "instances": instances}
        return JSONResponse(body, status_code=200 if healthy else 503)

    async def _metrics_route(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        from starlette.responses import Response

        body = generate_latest(self.runtime.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def _stream_route(self, request: Request) -> Response:
        from starlette.responses import StreamingResponse

        route = request.url.path
        started = time.perf_counter()
        self.metrics.inflight.labels(route).inc()
        stream: ResponseStream[Any] | None = None
        try:
            # A GET has no body: it asks an endpoint that reads state with no arguments.
            payload = {} if request.method == "GET" else await self._read_json(request)
            client, endpoint = self._targets[route]
            stream = client.stream(endpoint, payload)
            # Wait for the first item before answering, so that an error still gets its
            # own status code rather than a 200 with an error line.
            first = await anext(stream, _END)
        except (DynError, _HttpError) as exc:
            if stream is not None:
                await stream.aclose()
            self.metrics.inflight.labels(route).dec()
            return self._error_response(route, exc, started)

        async def lines() -> AsyncIterator[bytes]:
            assert stream is not None
            status = "200"
            try:
                async with stream:
                    if first is not _END:
                        yield f"{self.config.prefix}{_as_text(first)}\n".encode()
                        async for item in stream:
                            yield f"{self.config.prefix}{_as_text(item)}\n".encode()
            except CallError as exc:
                status = str(exc.http_status)
                yield f"error: {exc.message}\n".encode()
            except BaseException:
                status = "499"  # the client went away
                raise
            finally:
                self._finish(route, status, started)

        return StreamingResponse(lines(), media_type="text/plain; charset=utf-8")

    async def _read_json(self, request: Request) -> Any:
        limit = self.config.max_body_bytes
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _HttpError(413, f"request body is larger than {limit} bytes")
        try:
            # Any content-type is accepted so that a bare `curl -d '{...}'` works.
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _HttpError(400, f"request body is not valid JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise _HttpError(400, "request body must be a JSON object")
        return payload

    def _error_response(self, route: str, exc: Exception, started: float) -> Response:
        from starlette.responses import JSONResponse

        if isinstance(exc, _HttpError):
            status, message, code = exc.status, exc.message, None
        else:
            error = client_error(exc) if isinstance(exc, DynError) else RemoteError(str(exc))
            status, message, code = error.http_status, error.message, error.code
        headers = {"Retry-After": RETRY_AFTER_S} if status in (429, 503) else None
        if status >= 500:
            self.log.warning("%s answered %d: %s", route, status, message)
        self._finish(route, str(status), started, inflight=False)
        return JSONResponse(error_body(status, message, code=code), status, headers=headers)

    def _finish(self, route: str, status: str, started: float, inflight: bool = True) -> None:
        self.metrics.requests.labels(route, status).inc()
        self.metrics.duration.labels(route).observe(time.perf_counter() - started)
        if inflight:
            self.metrics.inflight.labels(route).dec()


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_END: Any = object()


def _as_text(item: Any) -> str:
    # A dyn.contracts.Text item reaches this untyped caller as its wire form.
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and item.get("type") == "text" and len(item) == 2:
        text = item.get("text")
        if isinstance(text, str):
            return text
    return json.dumps(item)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _server_class() -> type[uvicorn.Server]:
    import uvicorn

    class Server(uvicorn.Server):
        # dyn handles SIGINT/SIGTERM itself and drains every role in order.
        def capture_signals(self) -> Any:
            return nullcontext()

    return Server


# Named like the class it stands in for, where uvicorn expects a class.
def _Server(config: uvicorn.Config) -> uvicorn.Server:
    return _server_class()(config)
