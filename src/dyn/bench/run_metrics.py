"""Every ``/metrics`` page of a dyn run, scraped together, and their summed change.

In one process every role shares one registry, shown by the frontend's ``/metrics``. A
multi-process run has one registry per process: each role process serves its own page
and ``GET /admin/status`` lists it per instance as ``metrics_url``. Several instances
of one process list the same page, and several frontend processes may share one HTTP
port (a scrape of it reaches any one of them), so pages are counted once per URL and the
frontend's HTTP ``/metrics`` only when the answering frontend has no page of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import anyio
import httpx

from dyn.bench.scrape import Samples, delta, parse_metrics

__all__ = ["metrics_urls", "scrape_all", "summed_delta"]


async def metrics_urls(
    client: httpx.AsyncClient,
    base_url: str,
    admin_token: str | None = None,
    extra: Iterable[str] = (),
) -> list[str]:
    """The distinct metrics pages of the server at ``base_url`` (and ``extra`` ones, e.g.
    from the run record); just ``base_url/metrics`` for a server without dyn's status."""
    own = f"{base_url}/metrics"
    headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else None
    rows: list[object] = []
    try:
        response = await client.get(f"{base_url}/admin/status", headers=headers)
        if response.status_code == 200:
            rows = list(response.json().get("instances") or [])
    except (httpx.HTTPError, ValueError, AttributeError, TypeError):
        rows = []  # not dyn, too old, or guarded: its own page is all we can read
    found = [row.get("metrics_url") for row in rows if isinstance(row, dict)]
    urls = [url for url in [*found, *extra] if isinstance(url, str) and url]
    # The first row is the answering frontend; without a page of its own, its registry
    # is the one its HTTP /metrics shows.
    first = rows[0] if rows else None
    if not isinstance(first, dict) or not first.get("metrics_url"):
        urls.insert(0, own)
    return list(dict.fromkeys(urls))


async def scrape_all(client: httpx.AsyncClient, urls: Iterable[str]) -> dict[str, Samples]:
    """Each page parsed, all at once; a page that does not answer is left out."""
    pages: dict[str, Samples] = {}

    async def scrape(url: str) -> None:
        try:
            response = await client.get(url)
        except httpx.HTTPError:
            return
        if response.status_code == 200:
            pages[url] = parse_metrics(response.text)

    async with anyio.create_task_group() as tasks:
        for url in urls:
            tasks.start_soon(scrape, url)
    return pages


def summed_delta(before: Mapping[str, Samples], after: Mapping[str, Samples]) -> Samples:
    """The change of each page, summed over the pages: processes that share a metric
    (frontends' request counters, say) add up. A page gone by ``after`` is skipped."""
    out: Samples = {}
    for url, page in after.items():
        for key, value in delta(before.get(url, {}), page).items():
            out[key] = out.get(key, 0.0) + value
    return out
