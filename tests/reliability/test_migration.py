"""kill -9 one of three workers while 200 streamed completions run (tcp, one process per role).

With migration on (the default limit, 3) every request completes with exactly its token
count and the same text as an undisturbed run: the resent request carries the prompt
plus the tokens already generated, and the mocker's output is a function of the seed and
the context only. With ``migration_limit: 0`` the requests that were on the killed worker
end with an in-band error event followed by ``[DONE]``; every other request completes.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import anyio
import pytest
from _graph_up import KV_GRAPH, Streamed, Up, prompts, run_streams

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

REQUESTS = 200
CONCURRENCY = 32
MAX_TOKENS = 128
# Kill once this many requests have started: the first batch is done, a full batch is live.
KILL_AFTER_STARTED = 64


def _up(tmp_path: Path, *extra: str) -> Up:
    return Up(
        tmp_path / "state",
        str(KV_GRAPH),
        "--transport",
        "tcp",
        "--set",
        "worker.replicas=3",
        "--set",
        "worker.speedup_ratio=10",
        *extra,
    )


async def _run_and_kill(up: Up, texts: list[str]) -> tuple[list[Streamed], float]:
    """Stream every prompt; SIGKILL worker[1] once enough requests have started."""
    started: set[int] = set()
    reached = anyio.Event()
    victim = up.role_pids()["worker[1]"]
    killed_at = 0.0

    async def on_event(got: Streamed) -> None:
        if got.events == 1:
            started.add(id(got))
            if len(started) >= KILL_AFTER_STARTED:
                reached.set()

    async def killer() -> None:
        nonlocal killed_at
        await reached.wait()
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(killer)
        results = await run_streams(up.url, texts, MAX_TOKENS, CONCURRENCY, on_event)
        tasks.cancel_scope.cancel()
    assert killed_at, "the worker was never killed"
    return results, time.monotonic() - killed_at


def _summary(label: str, results: list[Streamed], up: Up, after_kill: float) -> int:
    migrated = up.log().count("migrating after")
    ok = sum(r.ok for r in results)
    print(
        f"\n{label}: sent {len(results)}, succeeded {ok}, failed {len(results) - ok}, "
        f"migrated {migrated}; the run ended {after_kill:.2f} s after the kill"
    )
    return migrated


def test_kill_9_a_worker_mid_stream_loses_no_request(tmp_path: Path) -> None:
    up = _up(tmp_path)
    try:
        up.wait_healthy()
        texts = prompts(REQUESTS, seed=8)
        reference = anyio.run(run_streams, up.url, texts, MAX_TOKENS, CONCURRENCY)
        assert all(r.ok and r.tokens == MAX_TOKENS for r in reference)
        results, after_kill = anyio.run(_run_and_kill, up, texts)
        migrated = _summary("migration_limit 3", results, up, after_kill)
    finally:
        up.stop()
    failed = [r for r in results if not r.ok]
    assert not failed, failed[:3]
    assert [r.tokens for r in results] == [MAX_TOKENS] * REQUESTS
    assert [r.text for r in results] == [r.text for r in reference]
    assert migrated >= 1, "no request was on the killed worker mid-stream"


def test_without_migration_only_the_killed_workers_requests_fail(tmp_path: Path) -> None:
    up = _up(tmp_path, "--set", "processor.migration_limit=0")
    try:
        up.wait_healthy()
        texts = prompts(REQUESTS, seed=9)
        results, after_kill = anyio.run(_run_and_kill, up, texts)
        _summary("migration_limit 0", results, up, after_kill)
    finally:
        up.stop()
    failed = [r for r in results if not r.ok]
    assert failed, "no request was on the killed worker mid-stream"
    # At most the killed worker's share of the requests in flight at the time.
    assert len(failed) <= CONCURRENCY
    for r in failed:
        assert r.status == 200 and r.done and r.text  # the error came in-band, mid-stream
        (error,) = r.errors
        assert error["error"]["code"] == "unavailable"
    assert all(r.tokens == MAX_TOKENS for r in results if r.ok)
