"""What one Prometheus scrape of each process page of a running graph costs its process.

For every target of the run's ``targets.json`` the page is fetched ``scrapes`` times in a
row while the serving process's CPU time (user + system, from ``/proc``) is read before
and after; the same wall time with no scrape is measured next and subtracted, so what an
idle role does anyway is not counted. Only processes of this machine can be measured.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from dyn.errors import DynError
from dyn.runs import RunStatus

__all__ = ["ScrapeCost", "measure_run", "warm_up"]

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ScrapeCost:
    role: str
    url: str
    page_bytes: int
    series: int
    cpu_ms_per_scrape: float


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def warm_up(frontend_url: str, requests: int) -> None:
    """Send ``requests`` short completions, so per-worker series exist as under load."""

    try:
        models = httpx.get(f"{frontend_url}/v1/models", timeout=10, trust_env=False).json()
        model = models["data"][0]["id"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
        raise DynError(f"cannot list the models of {frontend_url} to warm it up: {exc}") from exc

    def one(i: int) -> None:
        body = {"model": model, "prompt": f"warm-up {i} " * 8, "max_tokens": 2}
        reply = httpx.post(f"{frontend_url}/v1/completions", json=body, timeout=60, trust_env=False)
        if reply.status_code != 200:
            raise DynError(f"a warm-up request failed with {reply.status_code}: {reply.text}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(requests)))


def _measure(url: str, pid: int, scrapes: int) -> tuple[int, int, float]:
    with httpx.Client(timeout=10, trust_env=False) as client:
        page = client.get(url).text
        began, cpu0 = time.perf_counter(), _cpu_seconds(pid)
        for _ in range(scrapes):
            client.get(url).raise_for_status()
        wall, cpu = time.perf_counter() - began, _cpu_seconds(pid) - cpu0
    idle0 = _cpu_seconds(pid)
    time.sleep(wall)  # the same time without scrapes: what the process does anyway
    idle = _cpu_seconds(pid) - idle0
    series = sum(1 for line in page.splitlines() if line and not line.startswith("#"))
    return len(page.encode()), series, max(0.0, cpu - idle) / scrapes * 1000


def measure_run(
    status: RunStatus, scrapes: int, progress: Callable[[str], None] = lambda _: None
) -> list[ScrapeCost]:
    """One :class:`ScrapeCost` per target of the run's ``targets.json``."""
    record = status.record
    if record is None:
        raise DynError(f"run {status.run.run_id} has no record of its roles")
    # Only this machine's processes: a pid recorded for another node means nothing here.
    # A role without a pid of its own runs inside `dyn up` (the one-process layout).
    pids = {
        role.metrics_url: role.pid or record.pid
        for role in record.roles
        if role.metrics_url and role.pidfile is None
    }
    path = status.run.path / "targets.json"
    try:
        groups = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DynError(f"cannot read {path}: {exc}") from exc
    costs = []
    for group in groups:
        labels = group["labels"]
        url = f"http://{group['targets'][0]}{labels.get('__metrics_path__', '/metrics')}"
        pid = pids.get(url)
        if pid is None:
            continue  # a process of another machine (dyn join): its CPU is not readable here
        progress(f"scraping {labels['role']} {scrapes} times…")
        size, series, ms = _measure(url, pid, scrapes)
        costs.append(ScrapeCost(labels["role"], url, size, series, ms))
    return costs
