"""A role process's own /metrics server, over loopback, and how `dyn bench` finds and
sums every metrics page of a run (against canned /admin/status answers)."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from dyn.bench.run_metrics import metrics_urls, scrape_all, summed_delta
from dyn.bench.scrape import parse_metrics, total
from dyn.observability.metrics_server import serve_metrics

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


async def test_a_role_process_serves_its_registry() -> None:
    registry = CollectorRegistry()
    counter = Counter("dyn_things", "Things.", ["worker"], registry=registry)
    counter.labels("a").inc(3)
    async with anyio.create_task_group() as tasks:
        url = await serve_metrics(registry, "127.0.0.1", tasks)
        assert url.startswith("http://127.0.0.1:")
        assert url.endswith("/metrics")
        async with httpx.AsyncClient(timeout=5) as client:
            page = await client.get(url)
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/plain")
            assert total(parse_metrics(page.text), "dyn_things_total") == 3
            counter.labels("b").inc()  # each scrape reads the registry afresh
            assert total(parse_metrics((await client.get(url)).text), "dyn_things_total") == 4
            base = url.removesuffix("/metrics")
            assert (await client.get(f"{base}/nothing")).status_code == 404
            assert (await client.post(url)).status_code == 405
            head = await client.head(url)
            assert head.status_code == 200
            assert head.content == b""
        # A client that connects and says nothing does not stop the server.
        async with await anyio.connect_tcp("127.0.0.1", int(base.rsplit(":", 1)[1])) as idle:
            async with httpx.AsyncClient(timeout=5) as client:
                assert (await client.get(url)).status_code == 200
            await idle.send(b"GARBAGE\r\n\r\n")
            assert (await idle.receive()).startswith(b"HTTP/1.1 400")
        tasks.cancel_scope.cancel()


def _status(rows: list[dict[str, Any]], status: int = 200) -> httpx.MockTransport:
    pages = {
        "http://a/metrics": 'dyn_router_decisions_total{worker="w1"} 5\n',
        "http://p1/metrics": 'dyn_router_decisions_total{worker="w1"} 2\n',
        "http://w1/metrics": 'dyn_worker_requests_total{worker="w1"} 7\n',
    }
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if request.url.path == "/admin/status":
            return httpx.Response(status, json={"instances": rows})
        text = pages.get(str(request.url))
        return httpx.Response(200, text=text) if text else httpx.Response(404)

    transport = httpx.MockTransport(answer)
    transport.seen = seen  # type: ignore[attr-defined]
    return transport


async def test_every_distinct_page_once_without_the_frontends_http_one() -> None:
    rows = [
        {"role": "frontend", "metrics_url": "http://p1/metrics"},
        {"role": "processor", "metrics_url": "http://p1/metrics"},  # the same process
        {"role": "worker[0]", "metrics_url": "http://w1/metrics"},
    ]
    async with httpx.AsyncClient(transport=_status(rows)) as client:
        urls = await metrics_urls(client, "http://a", extra=["http://w1/metrics", "http://w9/x"])
        assert urls == ["http://p1/metrics", "http://w1/metrics", "http://w9/x"]
        pages = await scrape_all(client, urls)
    assert set(pages) == {"http://p1/metrics", "http://w1/metrics"}  # w9 answered 404


async def test_one_process_mode_scrapes_the_frontends_own_page() -> None:
    rows = [{"role": "frontend", "metrics_url": None}, {"role": "worker", "metrics_url": None}]
    async with httpx.AsyncClient(transport=_status(rows)) as client:
        assert await metrics_urls(client, "http://a") == ["http://a/metrics"]


@pytest.mark.parametrize("status", [401, 404, 500])
async def test_a_server_without_a_status_page_is_scraped_as_before(status: int) -> None:
    async with httpx.AsyncClient(transport=_status([], status)) as client:
        assert await metrics_urls(client, "http://a") == ["http://a/metrics"]


async def test_the_admin_token_goes_with_the_status_request() -> None:
    got: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        got.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"instances": []})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        await metrics_urls(client, "http://a", admin_token="s3cret")
    assert got == ["Bearer s3cret"]


def test_deltas_of_several_pages_add_up() -> None:
    key = "dyn_frontend_requests_total"
    before = {
        "p1": parse_metrics(f'{key}{{status="200"}} 10\n'),
        "p2": parse_metrics(f'{key}{{status="200"}} 4\n'),
        "gone": parse_metrics(f'{key}{{status="200"}} 99\n'),
    }
    after = {
        "p1": parse_metrics(f'{key}{{status="200"}} 15\n'),
        "p2": parse_metrics(f'{key}{{status="200"}} 9\n'),
        "new": parse_metrics(f'{key}{{status="200"}} 2\n'),  # started during the run
    }
    assert total(summed_delta(before, after), key) == 5 + 5 + 2
