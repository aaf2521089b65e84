"""``/dashboard``, ``/admin/dashboard/data`` and ``/admin/route/decisions`` of an
in-process kv graph, over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from _kv_graph_inprocess import serve_graph

from dyn.graph import load_graph
from dyn.launch.role_classes import role_class

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

BODY = {"model": "dyn-mock", "prompt": "one two three four " * 8, "max_tokens": 4}


async def serve(path: str, *overrides: str) -> AsyncIterator[str]:
    async with serve_graph(
        lambda port: load_graph(path, [port, *overrides], resolve_role=role_class)
    ) as url:
        yield url


@pytest.fixture
async def kv() -> AsyncIterator[str]:
    async for url in serve("graphs/kv_routing.yaml", "worker.replicas=3"):
        yield url


async def test_decisions_name_the_chosen_worker_with_every_candidates_cost(kv: str) -> None:
    async with httpx.AsyncClient(base_url=kv, timeout=10) as http:
        assert (await http.get("/admin/route/decisions")).json() == {"decisions": []}
        for _ in range(4):
            assert (await http.post("/v1/completions", json=BODY)).status_code == 200
        decisions = (await http.get("/admin/route/decisions")).json()["decisions"]
        status = (await http.get("/admin/status")).json()["instances"]
        two = (await http.get("/admin/route/decisions", params={"limit": 2})).json()
        bad = await http.get("/admin/route/decisions", params={"limit": "0"})
    workers = {row["instance_id"] for row in status if row["component"] == "worker"}
    assert len(decisions) == 4
    assert [d["time"] for d in decisions] == sorted((d["time"] for d in decisions), reverse=True)
    for decision in decisions:
        assert decision["worker"] in workers
        assert decision["strategy"] == "kv"
        assert {s["worker"] for s in decision["scores"]} == workers
        assert all(isinstance(s["cost"], float) for s in decision["scores"])
    # The same prompt again: the later requests find it cached where the first went.
    first = decisions[-1]
    last = decisions[0]
    overlap = {s["worker"]: s["overlap_blocks"] for s in last["scores"]}
    assert overlap[first["worker"]] > 0
    assert two["decisions"] == decisions[:2]
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "limit"


async def test_data_lists_every_worker_and_rates_over_polls(kv: str) -> None:
    async with httpx.AsyncClient(base_url=kv, timeout=10) as http:
        first = (await http.get("/admin/dashboard/data")).json()
        for _ in range(3):
            assert (await http.post("/v1/completions", json=BODY)).status_code == 200
        await anyio.sleep(0.6)  # past the interval within which a snapshot is reused
        data = (await http.get("/admin/dashboard/data")).json()
        status = (await http.get("/admin/status")).json()["instances"]
    workers = {row["instance_id"]: row["role"] for row in status if row["component"] == "worker"}
    assert first["requests_per_s"] is None  # a single snapshot: no interval yet
    assert {w["worker"]: w["role"] for w in data["workers"]} == workers
    assert data["strategy"] == "kv"
    assert data["requests_total"] == first["requests_total"] + 3
    assert data["requests_per_s"] > 0
    assert data["ttft_s"]["p50"] > 0
    assert data["itl_s"]["p99"] >= data["itl_s"]["p50"]
    assert data["prefix_hit_rate"] > 0  # the same prompt three times
    assert data["queue_depth"] is None  # no prefill queue in this graph
    assert all(0 <= w["kv_usage"] <= 1 for w in data["workers"])
    assert {d["worker"] for d in data["decisions"]} <= set(workers)
    assert len(data["decisions"]) == 3


async def test_the_page_and_its_files_are_served(kv: str) -> None:
    async with httpx.AsyncClient(base_url=kv, timeout=10) as http:
        page = await http.get("/dashboard")
        script = await http.get("/dashboard/dashboard.js")
        style = await http.get("/dashboard/dashboard.css")
        missing = await http.get("/dashboard/secrets.txt")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'src="/dashboard/dashboard.js"' in page.text
    # Nothing is loaded from elsewhere: no CDN, no external font.
    assert "http://" not in page.text
    assert "https://" not in page.text
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert "/admin/dashboard/data" in script.text
    assert style.status_code == 200
    assert style.headers["content-type"].startswith("text/css")
    assert missing.status_code == 404
    assert "error" in missing.json()


async def test_a_graph_without_processor_serves_the_dashboard_too() -> None:
    async for url in serve("graphs/hello_world.yaml"):
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            data = (await http.get("/admin/dashboard/data")).json()
            decisions = (await http.get("/admin/route/decisions")).json()
            assert (await http.get("/dashboard")).status_code == 200
        assert data["workers"] == []
        assert data["decisions"] == []
        assert data["strategy"] is None
        assert decisions == {"decisions": []}
