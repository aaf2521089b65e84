"""Send a workload to an OpenAI-compatible server and time every streamed request.

:class:`Server` wraps one HTTP client: the OpenAI routes any server has, and on dyn the
admin routes (switch the strategy, clear the workers' caches) and ``/metrics``.
:func:`run_requests` sends items at their arrival times under a concurrency cap;
:func:`run_arm` adds the warm-up, and around the measured part the scrapes of every
``/metrics`` page of the run and, for a `dyn up` run on this machine, its CPU readings;
:func:`compare` runs one arm per routing strategy against the same graph.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Literal, Protocol, Self

import anyio
import httpx

from dyn.bench.run_cpu import CpuMeter
from dyn.bench.run_metrics import metrics_urls, scrape_all, summed_delta
from dyn.bench.scrape import Samples, by_label, server_delta
from dyn.bench.stats import DEFAULT_PERCENTILES, RequestResult, shares, summarize
from dyn.bench.workloads import WorkItem
from dyn.errors import DynError

__all__ = ["Plan", "Progress", "Server", "Target", "compare", "run_arm", "run_requests"]

# After clearing the caches, let the workers' "cleared" events reach the router before
# the next arm's first request is routed.
SETTLE_S = 0.25


@dataclass(frozen=True)
class Target:
    base_url: str  # without /v1
    model: str | None = None  # None: the first of /v1/models
    api: Literal["completions", "chat"] = "completions"
    api_key: str | None = None
    ignore_eos: bool = True
    timeout_s: float = 600.0
    admin_token: str | None = None  # for GET /admin/status, where the metrics pages are
    metrics_urls: tuple[str, ...] = ()  # pages known beside those /admin/status lists


@dataclass(frozen=True)
class Plan:
    items: Sequence[WorkItem]
    warmup: Sequence[WorkItem] = ()
    max_concurrency: int | None = None
    percentiles: Sequence[float] = DEFAULT_PERCENTILES


class Progress(Protocol):
    def start(self, label: str, total: int) -> None:
        """A phase of ``total`` requests begins (``label``: "warm-up", "kv", ...)."""

    def done(self, result: RequestResult) -> None:
        """One request of the current phase ended."""


class Server:
    """An HTTP client for one server; use as ``async with Server(target, n) as server``."""

    def __init__(
        self,
        target: Target,
        max_connections: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,  # tests pass httpx.MockTransport
    ) -> None:
        self.target = target
        self.model = target.model or ""
        headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
        self.client = httpx.AsyncClient(
            base_url=target.base_url,
            headers=headers,
            timeout=httpx.Timeout(target.timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=None),
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        await self.client.__aenter__()
        if not self.model:
            data = await self._json("GET", "/v1/models")
            models = data.get("data") if isinstance(data, dict) else None
            if not models:
                raise DynError(f"{self.target.base_url}/v1/models lists no model; pass --model")
            self.model = str(models[0]["id"])
        else:
            await self._check_model()
        return self

    async def _check_model(self) -> None:
        """Refuse a --model the server says it does not serve: otherwise every request of
        the run would fail the same way. A server without a model list is taken at its word."""
        try:
            response = await self.client.get("/v1/models")
            data = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return  # the requests themselves will say what is wrong
        listed = data.get("data") if isinstance(data, dict) else None
        if not isinstance(listed, list) or not listed:
            return
        served = [str(m.get("id")) for m in listed if isinstance(m, dict)]
        if self.model not in served:
            raise DynError(
                f"model {self.model!r} is not served at {self.target.base_url} (its "
                f"/v1/models lists {', '.join(served)}); pass one of them to --model, or "
                "leave --model out for the first"
            )

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.client.__aexit__(kind, exc, tb)

    async def _json(
        self, method: str, path: str, body: Any = None, missing_ok: bool = False
    ) -> Any:
        url = f"{self.target.base_url}{path}"
        try:
            response = await self.client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise DynError(
                f"cannot reach {url} ({_why(exc)}); is the server up? Start one with "
                "`dyn up graphs/kv_routing.yaml`, or point --url at another"
            ) from exc
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code >= 400:
            why = _message(response.text)
            raise DynError(f"{method} {url} answered {response.status_code}: {why}")
        return response.json()

    # -- dyn's admin routes and metrics ------------------------------------------------

    async def strategy(self) -> str | None:
        """The routing strategy, or ``None`` for a server without dyn's admin routes."""
        data = await self._json("GET", "/admin/route", missing_ok=True)
        return str(data["strategy"]) if isinstance(data, dict) else None

    async def set_strategy(self, name: str) -> str:
        return str((await self._json("POST", "/admin/route", {"strategy": name}))["strategy"])

    async def clear_kv(self) -> dict[str, Any]:
        data = await self._json("POST", "/admin/kv/clear", {}, missing_ok=True)
        if data is None:
            raise DynError(f"{self.target.base_url} has no /admin/kv/clear; is it a dyn frontend?")
        return dict(data)

    async def scrape(self) -> Samples:
        """Every ``/metrics`` page of the server (one per process of a dyn run), parsed
        and added up; empty for a server without one."""
        target = self.target
        urls = await metrics_urls(
            self.client, target.base_url, target.admin_token, target.metrics_urls
        )
        return summed_delta({}, await scrape_all(self.client, urls))

    # -- one request -------------------------------------------------------------------

    def _request(self, item: WorkItem) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.model,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.target.ignore_eos:
            body["ignore_eos"] = True
        if self.target.api == "chat":
            body["messages"] = [{"role": m.role, "content": m.content} for m in item.messages]
            body["max_completion_tokens"] = item.output_len
            return "/v1/chat/completions", body
        body["prompt"] = item.prompt
        body["max_tokens"] = item.output_len
        return "/v1/completions", body

    async def send(self, item: WorkItem, epoch: float) -> RequestResult:
        """Stream one request; never raises for what the server or network does."""
        path, body = self._request(item)
        result = RequestResult(index=item.index, input_len=item.input_len)
        sent = last = time.perf_counter()
        result.start_s = sent - epoch
        chunks, usage = 0, None
        try:
            async with self.client.stream("POST", path, json=body) as response:
                result.status = response.status_code
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")
                    result.error = f"HTTP {response.status_code}: {_message(text)}"
                    return result
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        result.error = f"stream error: {_message(data)}"
                        return result
                    if event.get("choices"):
                        now = time.perf_counter()
                        if chunks == 0:
                            result.ttft_s = now - sent
                        else:
                            result.itls_s.append(now - last)
                        last, chunks = now, chunks + 1
                    usage = event.get("usage") or usage
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            return result
        result.e2el_s = time.perf_counter() - sent
        result.output_len = int(usage["completion_tokens"]) if usage else chunks
        if usage:
            result.input_len = int(usage.get("prompt_tokens") or item.input_len)
            details = usage.get("prompt_tokens_details") or {}
            result.cached_tokens = int(details.get("cached_tokens") or 0)
        result.ok = True
        return result


def _why(exc: httpx.HTTPError) -> str:
    """An httpx failure in a few words (its own text can be a bare repr)."""
    if isinstance(exc, httpx.ConnectError):
        return "nothing accepts connections there"
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _message(text: str) -> str:
    try:
        error = json.loads(text)["error"]
        return str(error.get("message", error))
    except (ValueError, KeyError, TypeError, AttributeError):
        return text.strip()[:200]


async def run_requests(
    server: Server,
    items: Sequence[WorkItem],
    max_concurrency: int | None = None,
    on_result: Callable[[RequestResult], None] | None = None,
    stop: anyio.Event | None = None,
) -> tuple[list[RequestResult], float]:
    """Send ``items`` at their arrival offsets (``None``: at once), each after the item
    it follows, at most ``max_concurrency`` at a time; return the results in item order
    and the run's duration in seconds.

    Once ``stop`` is set, nothing more is sent and requests in flight are abandoned: the
    results are those of the requests that ended by then (fewer than ``items``)."""
    limiter = anyio.CapacityLimiter(max_concurrency) if max_concurrency else None
    finished = {item.index: anyio.Event() for item in items}
    results: dict[int, RequestResult] = {}

    async def one(item: WorkItem) -> None:
        try:
            if item.after is not None and item.after in finished:
                await finished[item.after].wait()
            if limiter is None:
                result = await server.send(item, epoch)
            else:
                async with limiter:
                    result = await server.send(item, epoch)
            results[item.index] = result
            if on_result is not None:
                on_result(result)
        finally:
            finished[item.index].set()

    async def send_all() -> None:
        async with anyio.create_task_group() as tasks:
            for item in items:
                if item.arrival_s is not None:
                    await anyio.sleep(max(0.0, epoch + item.arrival_s - time.perf_counter()))
                tasks.start_soon(one, item)

    epoch = time.perf_counter()
    if stop is None:
        await send_all()
    else:
        async with anyio.create_task_group() as watch:
            watch.start_soon(_cancel_on, stop, watch.cancel_scope)
            await send_all()
            watch.cancel_scope.cancel()
    duration = time.perf_counter() - epoch
    return [results[item.index] for item in items if item.index in results], duration


async def _cancel_on(stop: anyio.Event, scope: anyio.CancelScope) -> None:
    await stop.wait()
    scope.cancel()


async def run_arm(
    server: Server,
    plan: Plan,
    progress: Progress,
    label: str,
    cpu: CpuMeter | None = None,
    stop: anyio.Event | None = None,
) -> dict[str, Any] | None:
    """Warm up, then measure ``plan.items`` between two scrapes of every ``/metrics`` page
    of the server (and two readings of ``cpu``: ``server_cpu`` is None without one).

    Once ``stop`` is set the arm ends early: None if that was before its measured
    requests began, else the figures of the requests that ended, with ``stopped`` saying
    how many of how many (``stopped`` is None for an arm that ran to the end)."""
    if plan.warmup:
        progress.start(f"{label}: warm-up", len(plan.warmup))
        # Warm-up keeps no schedule: it only has to get connections and caches going.
        warm = [replace(item, arrival_s=None) for item in plan.warmup]
        await run_requests(server, warm, plan.max_concurrency, progress.done, stop)
    if stop is not None and stop.is_set():
        return None
    target = server.target
    urls = await metrics_urls(
        server.client, target.base_url, target.admin_token, target.metrics_urls
    )
    before = await scrape_all(server.client, urls)
    cpu_before = cpu.read() if cpu is not None else {}
    progress.start(label, len(plan.items))
    results, duration = await run_requests(
        server, plan.items, plan.max_concurrency, progress.done, stop
    )
    cpu_after = cpu.read() if cpu is not None else {}
    # Every process's page: the router's decisions are counted where the router runs,
    # which in a multi-process run is not the frontend's process.
    changes = summed_delta(before, await scrape_all(server.client, urls))
    decisions = by_label(changes, "dyn_router_decisions_total", "worker")
    done = [r for r in results if r.ok]
    server_cpu = (
        cpu.report(cpu_before, cpu_after, len(done), sum(r.output_len for r in done))
        if cpu is not None
        else None
    )
    stopped = (
        {"requests_done": len(results), "requests_planned": len(plan.items)}
        if len(results) < len(plan.items)
        else None
    )
    return summarize(
        results,
        duration,
        plan.percentiles,
        extra={
            "worker_request_share": shares(decisions),
            "server_metrics_delta": server_delta(changes),
            "server_cpu": server_cpu,
            "stopped": stopped,
        },
    )


async def compare(
    server: Server,
    plan: Plan,
    strategies: Sequence[str],
    progress: Progress,
    cpu: CpuMeter | None = None,
    stop: anyio.Event | None = None,
    on_restore_error: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """One arm per strategy: switch live, clear the workers' caches, warm up, measure.
    The original strategy is restored at the end, whatever happened.

    Once ``stop`` is set no further arm begins; the arm running then is kept with the
    requests that ended (see :func:`run_arm`). A failed restore goes to
    ``on_restore_error`` when given (the arms are kept), else it is raised."""
    original = await server.strategy()
    if original is None:
        raise DynError(
            f"--compare switches strategies through /admin/route, which "
            f"{server.target.base_url} does not have; point --url at a dyn frontend"
        )
    arms: dict[str, dict[str, Any]] = {}
    try:
        for name in strategies:
            if stop is not None and stop.is_set():
                break
            strategy = await server.set_strategy(name)
            await server.clear_kv()
            await anyio.sleep(SETTLE_S)
            result = await run_arm(server, plan, progress, strategy, cpu, stop)
            if result is not None:
                arms[strategy] = {"strategy": strategy, **result}
    finally:
        with anyio.CancelScope(shield=True):
            try:
                await server.set_strategy(original)
            except DynError as exc:
                if on_restore_error is None:
                    raise
                on_restore_error(f"could not restore the strategy {original!r}: {exc}")
    return arms
