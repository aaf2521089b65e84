"""graphs/disagg.yaml through `dyn up`: where prefills run, live thresholds, a full queue,
the transferred blocks in the decode worker's cache, and a prefill worker killed mid-job.

Decisions are asserted through the frontend's ``/metrics``, which shows every role's
metrics when the graph runs in one process.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from _dyn_graph import ROOT, DynUp

from dyn.kv.events import KvStored, WorkerUpdate
from dyn.kv.hashing import local_block_hashes, sequence_hashes
from dyn.tokenizer import load_tokenizer

pytestmark = pytest.mark.e2e

GRAPH = ROOT / "graphs" / "disagg.yaml"
MODEL = "dyn-mock"
BLOCK = 16
ROUTES = (
    "frontend.routes={/admin/disagg: prefill_queue/set_disagg, "
    "/admin/prefill_queue: prefill_queue/depth, /admin/kv_events: worker/kv_events}"
)


class Up(DynUp):
    """A `dyn up` of the disagg graph; its log (every role's lines) kept in a file."""

    def __init__(self, tmp: Path, *overrides: str, transport: str = "inproc") -> None:
        args = [str(GRAPH), "--transport", transport]
        for override in (ROUTES, *overrides):
            args += ["--set", override]
        super().__init__(*args, state=tmp / "state", log_path=tmp / "up.log")
        self.wait_healthy(timeout=60)

    def complete(self, text: str, **extra: object) -> httpx.Response:
        body = {"model": MODEL, "prompt": text, "max_tokens": 4, "ignore_eos": True, **extra}
        return httpx.post(f"{self.url}/v1/completions", json=body, timeout=60)

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def prefills(self) -> tuple[float, float]:
        return (
            self.metric('dyn_prefills_total{location="remote"}'),
            self.metric('dyn_prefills_total{location="local"}'),
        )

    def set_disagg(self, **settings: int) -> dict[str, Any]:
        reply = httpx.post(f"{self.url}/admin/disagg", json=settings, timeout=10)
        assert reply.status_code == 200, reply.text
        state: dict[str, Any] = json.loads(reply.text)
        return state

    def queue_state(self) -> dict[str, Any]:
        """What the README's `curl localhost:8000/admin/prefill_queue` shows."""
        reply = httpx.get(f"{self.url}/admin/prefill_queue", timeout=10)
        assert reply.status_code == 200, reply.text
        state: dict[str, Any] = json.loads(reply.text)
        return state


RNG = random.Random(7)
VOCAB = [f"w{i}" for i in range(500)]


def long_prompt(words: int = 1500) -> str:
    """About two tokens per word: 3000 tokens, all new to every cache."""
    return " ".join(RNG.choice(VOCAB) for _ in range(words))


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    graph = Up(
        tmp_path_factory.mktemp("disagg"),
        "worker.replicas=1",
        "worker.speedup_ratio=10",
        # A prefill takes 0.3 s, so concurrent requests find the queue (of 1) full.
        "prefill_worker.timing={fixed: {prefill_ms: 300, decode_ms: 0}}",
        "prefill_queue.max_size=1",
    )
    try:
        yield graph
    finally:
        graph.stop(timeout=30)


def test_long_prompts_go_remote_and_short_ones_stay_local(up: Up) -> None:
    remote, local = up.prefills()
    text = long_prompt()
    reply = up.complete(text).json()
    prompt_tokens = reply["usage"]["prompt_tokens"]
    assert prompt_tokens > 1000
    # The whole prompt but its partial last block came from the prefill worker.
    cached = reply["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached == prompt_tokens // BLOCK * BLOCK
    assert up.prefills() == (remote + 1, local)
    assert up.complete("a short prompt").status_code == 200
    assert up.prefills() == (remote + 1, local + 1)
    assert up.metric("dyn_kv_transfer_seconds_count") >= 1
    assert up.metric("dyn_prefill_wait_seconds_count") >= 1


def test_the_queue_route_shows_every_threshold_in_force(up: Up) -> None:
    deadline = time.monotonic() + 10
    while not up.queue_state()["decode_workers"]:  # each reports on its first poll
        assert time.monotonic() < deadline, up.queue_state()
        time.sleep(0.1)
    state = up.queue_state()
    configured = {"max_local_prefill_length": 1000, "max_prefill_queue_size": 2}
    assert state["thresholds"] == configured
    assert list(state["decode_workers"].values()) == [configured]
    assert (state["depth"], state["max_size"], state["visibility_timeout_s"]) == (0, 1, 10)
    try:
        # The answer to a change is the whole state, not only the value set.
        after = up.set_disagg(max_local_prefill_length=500)
        changed = {**configured, "max_local_prefill_length": 500}
        assert after["thresholds"] == changed
        assert after["overrides"]["max_local_prefill_length"] == 500
        assert (after["depth"], after["max_size"]) == (0, 1)
        now = up.queue_state()
        assert now["thresholds"] == changed
        assert list(now["decode_workers"].values()) == [changed]
    finally:
        up.set_disagg(max_local_prefill_length=1000)


def test_the_decode_workers_cache_receives_the_prompts_blocks(up: Up) -> None:
    text = long_prompt()
    tokens = load_tokenizer(None).encode(text)
    expected = sequence_hashes(local_block_hashes(tokens, BLOCK))
    with httpx.stream("POST", f"{up.url}/admin/kv_events", json={}, timeout=30) as events:
        lines = events.iter_lines()
        assert msgspec.json.decode(next(lines), type=WorkerUpdate).snapshot
        with ThreadPoolExecutor(1) as pool:
            reply = pool.submit(up.complete, text)
            stored: list[int] = []
            for line in lines:
                for event in msgspec.json.decode(line, type=WorkerUpdate).events:
                    if isinstance(event.data, KvStored):
                        stored += [block.block_hash for block in event.data.blocks]
                if set(expected) <= set(stored):
                    break
            usage = reply.result().json()["usage"]
    # All the prompt's blocks arrived in one KvStored run, before any decoding.
    assert stored[: len(expected)] == expected
    assert usage["prompt_tokens_details"]["cached_tokens"] == len(expected) * BLOCK


def test_changing_the_threshold_while_running_changes_the_decision(up: Up) -> None:
    try:
        up.set_disagg(max_local_prefill_length=100_000)
        remote, local = up.prefills()
        assert up.complete(long_prompt()).status_code == 200
        assert up.prefills() == (remote, local + 1)

        up.set_disagg(max_local_prefill_length=100)
        time.sleep(1.0)  # decode workers pick thresholds up from the queue within 0.5 s
        assert up.complete(long_prompt(words=150)).status_code == 200  # ~300 tokens
        assert up.prefills() == (remote + 1, local + 1)
    finally:
        up.set_disagg(max_local_prefill_length=1000)


def test_a_full_queue_sends_prefills_local_and_never_hangs(up: Up) -> None:
    up.set_disagg(max_prefill_queue_size=100)  # let the queue's own bound decide
    try:
        remote, local = up.prefills()
        full = up.metric('dyn_remote_prefill_fallbacks_total{reason="queue_full"}')
        prompts = [long_prompt() for _ in range(4)]
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(up.complete, prompts))
        assert [r.status_code for r in replies] == [200] * 4
        now_remote, now_local = up.prefills()
        assert now_remote + now_local == remote + local + 4
        assert now_remote > remote
        assert now_local > local
        assert up.metric('dyn_remote_prefill_fallbacks_total{reason="queue_full"}') > full
    finally:
        up.set_disagg(max_prefill_queue_size=2)


def test_a_full_queue_answers_429_when_configured(tmp_path: Path) -> None:
    graph = Up(
        tmp_path,
        "worker.replicas=1",
        "worker.on_full_queue=reject",
        "worker.max_prefill_queue_size=100",
        "prefill_worker.timing={fixed: {prefill_ms: 500, decode_ms: 0}}",
        "prefill_queue.max_size=1",
    )
    try:
        with ThreadPoolExecutor(3) as pool:
            replies = list(pool.map(graph.complete, [long_prompt() for _ in range(3)]))
        statuses = sorted(r.status_code for r in replies)
        assert statuses[0] == 200, statuses
        assert 429 in statuses, statuses
        refused = next(r for r in replies if r.status_code == 429)
        assert "prefill queue is full" in refused.json()["error"]["message"]
        assert graph.metric("dyn_prefill_rejected_total") >= 1
    finally:
        graph.stop(timeout=30)


def test_killing_the_prefill_worker_mid_job_loses_no_request(tmp_path: Path) -> None:
    graph = Up(
        tmp_path,
        "worker.replicas=1",
        "worker.remote_prefill_timeout_s=60",  # so redelivery, not a fallback, finishes it
        "prefill_worker.timing={fixed: {prefill_ms: 3000, decode_ms: 0}}",
        "prefill_queue.visibility_timeout_s=1.5",
        transport="tcp",
    )
    try:
        with ThreadPoolExecutor(1) as pool:
            reply = pool.submit(graph.complete, long_prompt())
            deadline = time.monotonic() + 20
            holder = None
            while holder is None:
                assert time.monotonic() < deadline, graph.log()
                found = re.search(
                    r"(prefill_worker\[\d\]) \| .*prefilling job job-1\b", graph.log()
                )
                holder = found.group(1) if found else None
                time.sleep(0.05)
            os.kill(graph.role_pids()[holder], signal.SIGKILL)
            response = reply.result(timeout=60)
        assert response.status_code == 200
        usage = response.json()["usage"]
        # The other prefill worker got the job after its lease expired.
        assert usage["prompt_tokens_details"]["cached_tokens"] > 0
        deliveries = [line for line in graph.log().splitlines() if "prefilling job job-1" in line]
        # Once, and once more after the lease lapsed; the survivor renews its own lease.
        assert len(deliveries) == 2
        assert not deliveries[1].startswith(holder)
    finally:
        graph.stop(timeout=30)
