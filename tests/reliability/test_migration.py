"""kill -9 one of three workers while 200 streamed completions run (tcp, one process per role).

The worker is stopped (SIGSTOP) for a moment before the kill: the streams that then fall
silent are the ones it serves. With migration on (the default limit, 3) every request
completes with exactly its token count and the same text as an undisturbed run: the
resent request carries the prompt plus the tokens already generated, and the mocker's
output is a function of the sampling seed and the context only; the migrated requests are exactly
the silent ones, and ``dyn_migrations_total`` counts them. With ``migration_limit: 0``
exactly the silent requests end with an in-band error event followed by ``[DONE]``;
every other request completes.
"""

from __future__ import annotations

import os
import re
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from _dyn_graph import DynUp, metrics_pages
from _streams import KV_GRAPH, Streamed, prompts, run_streams

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

REQUESTS = 200
CONCURRENCY = 32
MAX_TOKENS = 128
# Kill once this many requests have started: the first batch is done, a full batch is live.
KILL_AFTER_STARTED = 64
# How long worker[1] is stopped before the kill: the streams it serves fall silent while
# the others go on (a token comes every few ms at speedup 10), which tells them apart.
STALL_S = 0.5


def _up(tmp_path: Path, *extra: str) -> DynUp:
    return DynUp(
        str(KV_GRAPH),
        "--transport",
        "tcp",
        "--set",
        "worker.replicas=3",
        "--set",
        "worker.speedup_ratio=10",
        *extra,
        state=tmp_path / "state",
        log_path=tmp_path / "up.log",
    )


async def _run_and_kill(
    up: DynUp, texts: list[str], **extra: Any
) -> tuple[list[Streamed], set[str], float]:
    """Stream every prompt; once enough requests have started, SIGSTOP worker[1], take
    the requests whose streams then stall (those it was serving), and SIGKILL it."""
    started: dict[str, Streamed] = {}
    last_event: dict[str, float] = {}
    reached = anyio.Event()
    victim = up.role_pids()["worker[1]"]
    stalled: set[str] = set()
    killed_at = 0.0

    async def on_event(got: Streamed) -> None:
        last_event[got.request_id] = time.monotonic()
        if got.events == 1:
            started[got.request_id] = got
            if len(started) >= KILL_AFTER_STARTED:
                reached.set()

    async def killer() -> None:
        nonlocal killed_at
        await reached.wait()
        os.kill(victim, signal.SIGSTOP)
        await anyio.sleep(STALL_S)
        # Started, not ended (no usage chunk yet) and silent for the second half of the
        # pause (the first lets what was already sent arrive): served by worker[1].
        quiet_since = time.monotonic() - STALL_S / 2
        stalled.update(
            rid
            for rid, got in started.items()
            if got.tokens is None and not got.done and last_event[rid] < quiet_since
        )
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()

    ids = [f"mig-{i}" for i in range(len(texts))]
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(killer)
        results = await run_streams(up.url, texts, MAX_TOKENS, CONCURRENCY, on_event, ids, **extra)
        tasks.cancel_scope.cancel()
    assert killed_at, "the worker was never killed"
    return results, stalled, time.monotonic() - killed_at


def _migrations(up: DynUp) -> tuple[list[str], float]:
    """The request ids the processors logged as migrated, and their dyn_migrations_total
    summed over every metrics page of the run (processors run in processes of their own)."""
    logged = re.findall(r"request (\S+): .*; migrating after", up.log())
    total = 0.0
    for page in metrics_pages(up.url):
        total += sum(map(float, re.findall(r"^dyn_migrations_total (\S+)$", page, re.M)))
    return logged, total


def _summary(label: str, results: list[Streamed], stalled: set[str], after_kill: float) -> None:
    ok = sum(r.ok for r in results)
    print(
        f"\n{label}: sent {len(results)}, succeeded {ok}, failed {len(results) - ok}; "
        f"{len(stalled)} on the killed worker mid-stream; the run ended {after_kill:.2f} s "
        "after the kill"
    )


def test_kill_9_a_worker_mid_stream_loses_no_request(tmp_path: Path) -> None:
    up = _up(tmp_path)
    try:
        up.wait_healthy()
        texts = prompts(REQUESTS, seed=8)
        reference = anyio.run(run_streams, up.url, texts, MAX_TOKENS, CONCURRENCY)
        assert all(r.ok and r.tokens == MAX_TOKENS for r in reference)
        results, stalled, after_kill = anyio.run(_run_and_kill, up, texts)
        _summary("migration_limit 3", results, stalled, after_kill)
        logged, metric = _migrations(up)
    finally:
        up.stop()
    print(f"migrated {len(logged)}; dyn_migrations_total {metric:.0f}")
    failed = [r for r in results if not r.ok]
    assert not failed, failed[:3]
    assert [r.tokens for r in results] == [MAX_TOKENS] * REQUESTS
    assert [r.text for r in results] == [r.text for r in reference]
    assert stalled, "no request was on the killed worker mid-stream"
    # Exactly the requests the killed worker was serving moved, each once, and counted.
    assert sorted(logged) == sorted(stalled)
    assert metric == len(stalled)


def test_without_migration_only_the_killed_workers_requests_fail(tmp_path: Path) -> None:
    up = _up(tmp_path, "--set", "processor.migration_limit=0")
    try:
        up.wait_healthy()
        texts = prompts(REQUESTS, seed=9)
        results, stalled, after_kill = anyio.run(_run_and_kill, up, texts)
        _summary("migration_limit 0", results, stalled, after_kill)
        logged, metric = _migrations(up)
    finally:
        up.stop()
    print(f"migrated {len(logged)}; dyn_migrations_total {metric:.0f}")
    failed = [r for r in results if not r.ok]
    assert failed, "no request was on the killed worker mid-stream"
    # Exactly the requests the killed worker was serving: a share of those in flight.
    assert {r.request_id for r in failed} == stalled
    assert len(failed) < CONCURRENCY
    for r in failed:
        assert r.status == 200  # the error came in-band, mid-stream
        assert r.done
        assert r.text
        (error,) = r.errors
        assert error["error"]["code"] == "unavailable"
    assert all(r.tokens == MAX_TOKENS for r in results if r.ok)
    assert not logged
    assert metric == 0


def test_migrated_requests_end_by_themselves_where_they_would_have(tmp_path: Path) -> None:
    # Outputs of ~60 tokens (median), so that most end by themselves before MAX_TOKENS:
    # the continuation decides where to end from the context and the output position,
    # both of which the resend carries.
    up = _up(tmp_path, "--set", "worker.output_length={median: 60, sigma: 0.6}")
    try:
        up.wait_healthy()
        texts = prompts(REQUESTS, seed=10)
        reference = anyio.run(
            partial(run_streams, up.url, texts, MAX_TOKENS, CONCURRENCY, ignore_eos=False)
        )
        results, stalled, after_kill = anyio.run(
            partial(_run_and_kill, up, texts, ignore_eos=False)
        )
        _summary("natural ends, migration_limit 3", results, stalled, after_kill)
        logged, _ = _migrations(up)
    finally:
        up.stop()
    assert all(r.ok for r in reference)
    ended = [r for r in reference if r.finish_reason == "stop"]
    assert len(ended) > REQUESTS / 2, "too few outputs ended by themselves"
    assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
    assert stalled, "no request was on the killed worker mid-stream"
    assert sorted(logged) == sorted(stalled)
    by_id = {f"mig-{i}": ref for i, ref in enumerate(reference)}
    for got in results:
        ref = by_id[got.request_id]
        assert (got.text, got.tokens, got.finish_reason) == (
            ref.text,
            ref.tokens,
            ref.finish_reason,
        )
    migrated_and_ended = [
        r for r in results if r.request_id in stalled and r.finish_reason == "stop"
    ]
    assert migrated_and_ended, "no migrated request ended by itself"
