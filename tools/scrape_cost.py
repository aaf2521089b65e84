"""What a Prometheus scrape costs each role process of a running dyn graph.

    python tools/scrape_cost.py [--run RUN_ID] [--scrapes 300] [--warm 200]

For every target in the run's ``targets.json`` (the newest live run by default), it
fetches the page ``--scrapes`` times in a row and reads the serving process's CPU time
(user + system, from /proc) before and after; the same wall time with no scrape is
measured first and subtracted, so what an idle role does anyway is not counted. Prints
one row per target: its role, the page's size and series count, and the CPU
milliseconds one scrape costs. ``--warm N`` first sends N short completions through the
frontend, so that per-worker series (routing decisions) exist as in a run under load.
Run it on an idle graph on this machine (it reads the processes' CPU from /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from dyn import runs, state

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def warm(base: str, requests: int) -> None:
    def one(i: int) -> None:
        body = {"model": "dyn-mock", "prompt": f"warm-up {i} " * 8, "max_tokens": 2}
        httpx.post(f"{base}/v1/completions", json=body, timeout=60).raise_for_status()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(requests)))


def measure(url: str, pid: int, scrapes: int) -> tuple[int, int, float]:
    """(page bytes, series, CPU ms per scrape) of ``scrapes`` scrapes of ``url``."""
    with httpx.Client(timeout=10) as client:
        page = client.get(url).text
        began, cpu0 = time.perf_counter(), cpu_seconds(pid)
        for _ in range(scrapes):
            client.get(url).raise_for_status()
        wall, cpu = time.perf_counter() - began, cpu_seconds(pid) - cpu0
    idle0 = cpu_seconds(pid)
    time.sleep(wall)  # the same time without scrapes: what the process does anyway
    idle = cpu_seconds(pid) - idle0
    series = sum(1 for line in page.splitlines() if line and not line.startswith("#"))
    return len(page.encode()), series, max(0.0, cpu - idle) / scrapes * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a run id (default: the newest live run)")
    parser.add_argument("--scrapes", type=int, default=300)
    parser.add_argument("--warm", type=int, default=0, metavar="N")
    args = parser.parse_args()
    live = [s for s in runs.running_runs() if s.state == "live"]
    if args.run:
        live = [s for s in live if s.run.run_id.startswith(args.run)]
    if not live or live[0].record is None:
        sys.exit("error: no live run here; start one with `dyn up GRAPH`")
    run, record = live[0].run, live[0].record
    if args.warm and record.frontend_url:
        warm(record.frontend_url, args.warm)
    pids = {role.metrics_url: role.pid for role in record.roles if role.metrics_url}
    targets = json.loads((run.path / "targets.json").read_text())
    print(f"run {run.run_id}: {len(record.roles)} role instances, {len(targets)} targets")
    print(f"{'role':<24} {'bytes':>8} {'series':>7} {'CPU ms/scrape':>14}")
    for group in targets:
        labels = group["labels"]
        url = f"http://{group['targets'][0]}{labels['__metrics_path__']}"
        size, series, ms = measure(url, pids[url], args.scrapes)
        print(f"{labels['role']:<24} {size:>8} {series:>7} {ms:>14.3f}")


if __name__ == "__main__":
    state.state_dir()  # DYN_STATE_DIR names the runs to look at, as for every dyn command
    main()
