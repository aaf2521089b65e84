"""graphs/disagg.yaml with its prefill queue on JetStream (a real nats-server this test
starts; the requests themselves go over tcp): kill -9 the prefill worker holding jobs,
and every request of a bounded load still completes, its jobs redelivered."""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from _dyn_graph import status_json
from _nats_server import running_nats
from test_disagg import Up, long_prompt

pytestmark = pytest.mark.e2e

REQUESTS = 6
JOB_LINE = re.compile(r"(prefill_worker\[\d\]) \| .*prefilling job (js-\d+)\b")


def role_pids(graph: Up) -> dict[str, int]:
    """Role → pid, as `dyn status --json` shows them (once the run record names its URL)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return {row["role"]: row["pid"] for row in status_json(graph)["instances"]}
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_jetstream_queue_survives_kill_9_of_the_prefill_worker_holding_a_job(
    tmp_path: Path,
) -> None:
    with running_nats(tmp_path / "nats") as nats_url:
        graph = Up(
            tmp_path,
            "worker.replicas=1",
            "worker.max_prefill_queue_size=100",  # every long prompt goes remote
            "worker.remote_prefill_timeout_s=60",  # so redelivery, not a fallback, finishes it
            "prefill_worker.timing={fixed: {prefill_ms: 2000, decode_ms: 0}}",
            "prefill_queue.backend=jetstream",
            f"prefill_queue.options={{servers: [{nats_url}]}}",
            "prefill_queue.visibility_timeout_s=1.5",
            transport="tcp",
        )
        try:
            pids = role_pids(graph)
            prompts = [long_prompt() for _ in range(REQUESTS)]
            with ThreadPoolExecutor(REQUESTS) as pool:
                replies = [pool.submit(graph.complete, text) for text in prompts]
                deadline = time.monotonic() + 30
                found = None
                while found is None:
                    assert time.monotonic() < deadline, graph.log()
                    found = JOB_LINE.search(graph.log())
                    time.sleep(0.05)
                holder = found.group(1)
                assert pids[holder] != pids["frontend"], pids  # kills only a prefill worker
                os.kill(pids[holder], signal.SIGKILL)
                killed_at = time.monotonic()
                responses = [reply.result(timeout=90) for reply in replies]
                recovered_s = time.monotonic() - killed_at
            assert [r.status_code for r in responses] == [200] * REQUESTS
            # Every prefill was remote: the decode worker got each prompt's blocks.
            assert all(
                r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0 for r in responses
            )
            deliveries = [m.groups() for m in JOB_LINE.finditer(graph.log())]
            held = {job for role, job in deliveries if role == holder}
            # Each job the dead worker held was delivered again, to the survivor.
            redone = {job for role, job in deliveries if role != holder and job in held}
            assert held
            assert redone == held, deliveries
            state = httpx.get(f"{graph.url}/admin/prefill_queue", timeout=10).json()
            assert state["depth"] == 0, state
            assert state["redelivered_total"] >= len(held), state
            print(
                f"requests {REQUESTS}, completed {len(responses)}, redelivered {len(held)}, "
                f"all done {recovered_s:.1f} s after the kill"
            )
        finally:
            graph.stop(timeout=30)
