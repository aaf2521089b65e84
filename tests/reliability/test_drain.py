"""SIGTERM to a worker under load (tcp, one process per role): it leaves discovery at once,
finishes what it serves, and exits 0; no request fails. SIGTERM to the frontend: new
requests get 503 while the admitted ones complete."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import anyio
import httpx
import pytest
from _dyn_graph import DynUp
from _streams import KV_GRAPH, Streamed, completion_body, prompts, run_streams

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

REQUESTS = 150
CONCURRENCY = 32
MAX_TOKENS = 128
GRACE_S = 30  # stop_role's drain bound


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] == "Z"
    except FileNotFoundError:
        return True


async def _wait_busy(url: str, role: str, timeout_s: float = 10.0) -> bool:
    """Wait until ``role`` has a request in flight, as the frontend's status reports it."""
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        with anyio.move_on_after(timeout_s):
            while True:
                rows = (await http.get("/admin/status")).json()["instances"]
                if any(r["role"] == role and (r["in_flight"] or 0) > 0 for r in rows):
                    return True
                await anyio.sleep(0.01)
    return False


def test_sigterm_a_worker_under_load_fails_no_request(tmp_path: Path) -> None:
    up = DynUp(
        str(KV_GRAPH),
        "--transport",
        "tcp",
        "--set",
        "worker.replicas=3",
        "--set",
        "worker.speedup_ratio=10",
        state=tmp_path / "state",
        log_path=tmp_path / "up.log",
    )
    try:
        up.wait_healthy()
        victim = up.role_pids()["worker[1]"]
        started = 0
        exited_after = 0.0

        async def on_event(got: Streamed) -> None:
            nonlocal started
            if got.events == 1:
                started += 1
                if started == 48:
                    tasks.start_soon(terminate)

        async def terminate() -> None:
            nonlocal exited_after
            # Only a worker with requests in flight has anything to drain.
            busy = await _wait_busy(up.url, "worker[1]")
            assert busy, "worker[1] never had a request in flight"
            t0 = time.monotonic()
            os.kill(victim, signal.SIGTERM)
            while not _gone(victim):  # noqa: ASYNC110
                await anyio.sleep(0.02)
            exited_after = time.monotonic() - t0

        tasks: anyio.abc.TaskGroup

        async def main() -> list[Streamed]:
            nonlocal tasks
            async with anyio.create_task_group() as tasks:
                streamed = await run_streams(up.url, prompts(REQUESTS, 5), MAX_TOKENS, 32, on_event)
            return streamed

        results = anyio.run(main)
        log = up.log()
    finally:
        up.stop()
    ok = sum(r.ok and r.tokens == MAX_TOKENS for r in results)
    print(
        f"\nSIGTERM worker[1] under load: sent {len(results)}, succeeded {ok}, "
        f"failed {len(results) - ok}; the worker exited {exited_after:.2f} s after SIGTERM"
    )
    assert ok == REQUESTS, [r for r in results if not r.ok][:3]
    # The drain, not migration, saved them: nothing was resent.
    assert "migrating after" not in log
    assert "draining" in log, log[-3000:]
    assert 0 < exited_after < GRACE_S, exited_after
    codes = re.findall(r"worker\[1\].*exited unexpectedly with code (-?\d+)", log)
    assert codes == ["0"], log[-3000:]


def test_sigterm_the_frontend_answers_503_while_in_flight_requests_finish(
    tmp_path: Path,
) -> None:
    # One frontend, one process per role: a drained frontend has no replica that would
    # take its connections (the auto layout runs one per core behind the port).
    up = DynUp(
        str(KV_GRAPH),
        "--transport",
        "tcp",
        "--layout",
        "process-per-role",
        "--set",
        "worker.replicas=1",
        "--set",
        "worker.speedup_ratio=2",
        state=tmp_path / "state",
        log_path=tmp_path / "up.log",
    )
    try:
        up.wait_healthy()
        frontend = up.role_pids()["frontend"]

        async def main() -> tuple[list[Streamed], list[int]]:
            refused: list[int] = []
            async with httpx.AsyncClient(base_url=up.url, timeout=60) as http:
                in_flight = anyio.create_task_group()
                async with in_flight:
                    results = [Streamed() for _ in range(4)]

                    async def long(i: int) -> None:
                        from _streams import stream_completion

                        results[i] = await stream_completion(http, f"long {i}", 200)

                    for i in range(4):
                        in_flight.start_soon(long, i)
                    await anyio.sleep(0.5)
                    os.kill(frontend, signal.SIGTERM)
                    await anyio.sleep(0.2)
                    for text in prompts(5, 6):
                        resp = await http.post("/v1/completions", json=completion_body(text, 4))
                        refused.append(resp.status_code)
                        assert resp.headers.get("retry-after") == "1"
            return results, refused

        results, refused = anyio.run(main)
    finally:
        up.stop()
    print(f"\nSIGTERM frontend: in flight {[r.ok for r in results]}, new requests {refused}")
    assert all(r.ok and r.tokens == 200 for r in results)
    assert refused == [503] * 5
