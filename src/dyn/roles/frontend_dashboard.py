"""The frontend's dashboard: ``/dashboard`` and the admin routes its page polls.

``GET /dashboard`` is a static page (HTML, CSS and a small script shipped in
``dyn/roles/dashboard/``, no build step, nothing loaded from elsewhere). Its script polls
``GET /admin/dashboard/data`` every second: one JSON snapshot of the whole graph,
computed here from every role's ``/metrics`` page (this process's own registry, and each
other process's ``metrics_url`` from discovery, scraped with a short timeout), from what
the processors know of their workers (``route_info``) and from their last routing
decisions (``route_decisions``). ``GET /admin/route/decisions`` lists those decisions,
newest first, each with its processor instance.

The history that rates and percentiles are computed over lives here, not in the browser
(:mod:`dyn.observability.dashboard_data`): a burst of page loads triggers at most one
scrape per :data:`MIN_SCRAPE_INTERVAL_S`.

The routes are guarded as the admin routes are (:class:`~dyn.roles.frontend_admin.
AuthMiddleware`): a browser presents the admin token once as ``/dashboard?token=...``,
which sets an HttpOnly, SameSite=Strict cookie that the GET admin routes accept too.
"""

from __future__ import annotations

import time
from collections import deque
from importlib import resources
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from dyn.bench.scrape import parse_metrics
from dyn.errors import DynError
from dyn.observability.dashboard_data import Snapshot, snapshot, window, worker_hit_rates
from dyn.observability.metrics_server import METRICS_URL_KEY
from dyn.routing.base import RouteRequest

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from dyn.roles.frontend import Frontend
    from dyn.runtime.client import Client

__all__ = ["DashboardData", "collect_decisions", "dashboard_routes"]

# The page's files, by the name the page asks for, and their content types.
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# A role page that does not answer in this time is left out of this snapshot.
SCRAPE_TIMEOUT_S = 1.0
# The whole snapshot answers in about this time, whatever does not.
DATA_TIMEOUT_S = 2.0
# Snapshots closer together than this reuse the last one (several pages open at once).
MIN_SCRAPE_INTERVAL_S = 0.5
# Snapshots kept: the window is a few seconds, so this covers it at any poll rate.
HISTORY = 64
# Decisions the page shows.
DECISIONS_SHOWN = 12


async def collect_decisions(processor: Client | None, limit: int) -> list[dict[str, Any]]:
    """Every processor instance's last decisions, newest first, each with its
    ``processor``; instances that do not answer in time are left out."""
    rows: list[dict[str, Any]] = []
    if processor is None:
        return rows

    async def ask(instance_id: str) -> None:
        route = RouteRequest(request_id=f"decisions-{instance_id}", instance_id=instance_id)
        try:
            async with processor.stream("route_decisions", {}, route=route) as items:
                async for item in items:
                    for row in item.get("decisions") or ():
                        rows.append({**row, "processor": instance_id})
                    return
        except DynError:
            pass  # an older processor or one that is going: the others still show

    with anyio.move_on_after(DATA_TIMEOUT_S):
        async with anyio.create_task_group() as tasks:
            for instance in processor.instances("route_decisions"):
                tasks.start_soon(ask, instance.instance_id)
    rows.sort(key=lambda row: row.get("time", 0.0), reverse=True)
    return rows[: max(0, limit)]


async def _route_info(processor: Client | None) -> dict[str, Any]:
    """The first processor's answer to ``route_info`` (strategy, workers), or nothing."""
    if processor is None:
        return {}
    for instance in processor.instances("route_info"):
        route = RouteRequest(
            request_id=f"dashboard-{instance.instance_id}", instance_id=instance.instance_id
        )
        try:
            with anyio.fail_after(DATA_TIMEOUT_S):
                async with processor.stream("route_info", {}, route=route) as items:
                    async for item in items:
                        return dict(item)
        except (DynError, TimeoutError):
            continue
    return {}


class DashboardData:
    """The frontend's snapshots of the graph and the JSON the page polls."""

    def __init__(self, frontend: Frontend) -> None:
        self.frontend = frontend
        self.snapshots: deque[Snapshot] = deque(maxlen=HISTORY)
        self._lock = anyio.Lock()
        self._last: dict[str, Any] | None = None

    async def data(self) -> dict[str, Any]:
        async with self._lock:
            newest = self.snapshots[-1].time if self.snapshots else None
            if (
                self._last is None
                or newest is None
                or time.monotonic() - newest >= (MIN_SCRAPE_INTERVAL_S)
            ):
                self._last = await self._collect()
            return self._last

    async def _collect(self) -> dict[str, Any]:
        frontend = self.frontend
        namespace = frontend.info.namespace
        instances = await frontend.runtime.discovery.snapshot(f"{namespace}/")
        roles: dict[str, dict[str, Any]] = {}
        urls: list[str] = []
        own = frontend.runtime.metadata.get(METRICS_URL_KEY)
        for instance in instances:
            roles.setdefault(
                instance.instance_id,
                {"component": instance.component, "replica": instance.replica,
                 "node": instance.node},
            )  # fmt: skip
            url = instance.metadata.get(METRICS_URL_KEY)
            if isinstance(url, str) and url and url != own and url not in urls:
                urls.append(url)
        info: dict[str, Any] = {}
        decisions: list[dict[str, Any]] = []
        pages: dict[str, str] = {}

        async def route_info() -> None:
            info.update(await _route_info(frontend.processor))

        async def recent() -> None:
            decisions.extend(await collect_decisions(frontend.processor, DECISIONS_SHOWN))

        async with httpx.AsyncClient(timeout=SCRAPE_TIMEOUT_S, trust_env=False) as client:

            async def scrape(url: str) -> None:
                try:
                    response = await client.get(url)
                except httpx.HTTPError:
                    return
                if response.status_code == 200:
                    pages[url] = response.text

            with anyio.move_on_after(DATA_TIMEOUT_S):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(route_info)
                    tasks.start_soon(recent)
                    for url in urls:
                        tasks.start_soon(scrape, url)
        from prometheus_client import generate_latest

        # This process's registry, read in place (in one-process mode it holds every role).
        samples = parse_metrics(generate_latest(frontend.runtime.registry).decode())
        for text in pages.values():
            for key, value in parse_metrics(text).items():
                samples[key] = samples.get(key, 0.0) + value
        self.snapshots.append(snapshot(samples, time.monotonic()))
        history = list(self.snapshots)
        figures = window(history)
        return {
            "time": time.time(),
            "namespace": namespace,
            "strategy": info.get("strategy"),
            **figures,
            "prefills_total": dict(history[-1].prefills),
            "workers": _workers(info, history, figures, roles),
            "decisions": decisions,
            "pages": {"scraped": len(pages) + 1, "missing": sorted(set(urls) - set(pages))},
        }


def _workers(
    info: dict[str, Any],
    history: list[Snapshot],
    figures: dict[str, Any],
    roles: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """One row per worker the processor routes to (or that reports worker metrics)."""
    newest = history[-1]
    stats: dict[str, dict[str, Any]] = info.get("workers") or {}
    ids = [row.get("instance_id") for row in info.get("instances") or ()]
    ids += [*stats, *newest.worker_kv_total, *newest.routed]
    hit_rates = worker_hit_rates(history)
    routed: dict[str, float] = figures.get("routed_per_s") or {}
    rows = []
    for worker in dict.fromkeys(w for w in ids if isinstance(w, str)):
        own = stats.get(worker, {})
        role = roles.get(worker, {})
        total = newest.worker_kv_total.get(worker) or own.get("total_blocks")
        active = newest.worker_kv_active.get(worker, own.get("active_blocks"))
        in_flight = newest.worker_inflight.get(worker, own.get("in_flight", own.get("running")))
        rows.append(
            {
                "worker": worker,
                "role": _role_name(role),
                "node": role.get("node"),
                "in_flight": in_flight,
                "kv_usage": float(active) / float(total) if total and active is not None else None,
                "cached_blocks": own.get("cached_blocks"),
                "routed_per_s": routed.get(worker),
                "routed_total": newest.routed.get(worker),
                "prefix_hit_rate": hit_rates.get(worker),
            }
        )
    rows.sort(key=lambda row: (row["role"] or "", row["worker"]))
    return rows


def _role_name(role: dict[str, Any]) -> str | None:
    component = role.get("component")
    return None if component is None else f"{component}[{role.get('replica', 0)}]"


def _asset(name: str) -> bytes:
    return resources.files("dyn.roles").joinpath("dashboard", name).read_bytes()


def dashboard_routes(frontend: Frontend) -> list[Route]:
    from starlette.responses import JSONResponse
    from starlette.responses import Response as PlainResponse
    from starlette.routing import Route

    data = DashboardData(frontend)
    # The page must show what is running now, never a cached copy.
    no_store = {"Cache-Control": "no-store"}

    async def page(request: Request) -> Response:
        return PlainResponse(_asset("index.html"), media_type="text/html; charset=utf-8",
                             headers=no_store)  # fmt: skip

    async def asset(request: Request) -> Response:
        from dyn.openai.errors import error_body

        name = request.path_params["name"]
        if name not in ASSETS:
            return JSONResponse(error_body(404, f"no dashboard file {name!r}"), 404)
        return PlainResponse(_asset(name), media_type=ASSETS[name], headers=no_store)

    async def snapshot_route(request: Request) -> Response:
        return JSONResponse(await data.data(), headers=no_store)

    async def decisions(request: Request) -> Response:
        from dyn.routing.decisions import DEFAULT_DECISIONS_KEPT

        try:
            limit = int(request.query_params.get("limit", DEFAULT_DECISIONS_KEPT))
        except ValueError:
            limit = -1
        if limit < 1:
            from dyn.openai.errors import error_body

            body = error_body(400, "limit must be a whole number of at least 1", param="limit")
            return JSONResponse(body, 400)
        rows = await collect_decisions(frontend.processor, limit)
        return JSONResponse({"decisions": rows}, headers=no_store)

    return [
        Route("/dashboard", page, methods=["GET"]),
        Route("/dashboard/{name}", asset, methods=["GET"]),
        Route("/admin/dashboard/data", snapshot_route, methods=["GET"]),
        Route("/admin/route/decisions", decisions, methods=["GET"]),
    ]
