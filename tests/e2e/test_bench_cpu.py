"""`dyn bench` against a real `dyn up` run: the server's CPU per request, per process of
the run (read from /proc), and metric deltas that cover every process.

Zero-time workers, few requests: the tests check that the figures are there, non-zero,
attributed to the right processes and within generous bounds, never a target.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from _dyn_graph import ROOT, DynUp, free_port
from typer.testing import CliRunner

from dyn.cli.app import app

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

GRAPH = ROOT / "graphs" / "kv_routing.yaml"
PROMPTS = 100  # 4 groups x 25 prompts
OUTPUT_LEN = 8
WORKLOAD = [
    "--workload", "shared-prefix", "--groups", "4", "--prompts-per-group", "25",
    "--system-prompt-len", "64", "--question-len", "16", "--output-len", str(OUTPUT_LEN),
    "--max-concurrency", "8", "--warmup", "4",
]  # fmt: skip
ZERO_TIME = "worker.timing={fixed: {prefill_ms: 0, decode_ms: 0}}"
WORKERS = {f"worker[{i}]" for i in range(4)}


def start(graph: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> DynUp:
    state = tmp_path / "state"
    # The bench (in this process) finds the run in the same state folder.
    monkeypatch.setenv("DYN_STATE_DIR", str(state))
    up = DynUp(str(graph), *args, "--set", ZERO_TIME, log_path=tmp_path / "up.log", state=state)
    up.wait_healthy(timeout=60)
    return up


def bench(url: str, out: Path, *extra: str) -> tuple[str, Any]:
    args = ["bench", "--url", url, *WORKLOAD, "--save-result", str(out), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output, json.loads(out.read_text())


def check_cpu(result: dict[str, Any], up_pid: int) -> dict[int, list[str]]:
    """The CPU section's sanity; its processes as pid -> roles."""
    cpu = result["server_cpu"]
    assert cpu is not None
    assert cpu["requests"] == result["completed"] == PROMPTS
    assert cpu["output_tokens"] == result["total_output_tokens"] == PROMPTS * OUTPUT_LEN
    assert cpu["cpu_s"] > 0
    assert 0 < cpu["ms_per_request"] < 200
    assert 0 < cpu["us_per_output_token"] < 200_000 / OUTPUT_LEN
    processes = {p["pid"]: p["roles"] for p in cpu["processes"]}
    assert "dyn up" in processes[up_pid]
    assert sum(p["cpu_s"] for p in cpu["processes"]) == pytest.approx(cpu["cpu_s"])
    assert cpu["not_measured"] == []
    return processes


def check_metrics(result: dict[str, Any]) -> None:
    share = result["worker_request_share"]
    assert len(share) == 4, share
    assert sum(share.values()) == pytest.approx(1.0)
    delta = result["server_metrics_delta"]
    # Counted once each, though several processes serve metrics pages.
    assert delta["dyn_frontend_requests_total"] == PROMPTS
    assert delta["dyn_router_decisions_total"] == PROMPTS
    assert delta["dyn_worker_requests_total"] == PROMPTS
    assert delta["dyn_prompt_tokens_total"] == result["total_input_tokens"]


def test_one_process_per_role_over_tcp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ("--transport", "tcp", "--layout", "process-per-role")
    with start(GRAPH, tmp_path, monkeypatch, *args) as up:
        pids = up.role_pids()
        output, arms = bench(up.url, tmp_path / "r.json", "--compare", "round_robin,kv")
    assert list(arms) == ["round_robin", "kv"]
    for result in arms.values():
        check_metrics(result)
        processes = check_cpu(result, up.pid)
        assert processes[up.pid] == ["dyn up"]
        for role, pid in pids.items():
            assert processes[pid] == [role]
        assert {role for roles in processes.values() for role in roles} == {
            "dyn up",
            "frontend",
            "processor",
            *WORKERS,
        }
    assert "Server CPU per request (ms)" in output
    assert output.count("Server CPU (this machine)") == 2  # one table per arm


def test_auto_layout_front_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several frontend + processor processes share the HTTP port: each one's metrics
    count once, whichever of them answers, and each is named with both of its roles."""
    with start(GRAPH, tmp_path, monkeypatch, "--layout", "auto", "--front-processes", "2") as up:
        roles_by_pid: dict[int, list[str]] = {}
        for role, pid in up.role_pids().items():
            roles_by_pid.setdefault(pid, []).append(role)
        _, arms = bench(up.url, tmp_path / "r.json", "--compare", "round_robin,kv")
    for result in arms.values():
        check_metrics(result)
        processes = check_cpu(result, up.pid)
        for pid, roles in roles_by_pid.items():
            assert sorted(processes[pid]) == sorted(roles)
        fronts = [roles for roles in processes.values() if any("frontend" in r for r in roles)]
        assert len(fronts) == 2  # as pinned
        # Every other role process hosts workers: the auto rule spreads them over at most
        # one process per CPU dyn up may use.
        engines = [roles for roles in processes.values() if roles and roles[0].startswith("worker")]
        assert len(engines) == min(len(os.sched_getaffinity(0)), len(WORKERS))
        assert all(any("processor" in r for r in roles) for roles in fronts)


def test_one_process_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with start(GRAPH, tmp_path, monkeypatch, "--layout", "one-process") as up:
        output, result = bench(up.url, tmp_path / "r.json")
    check_metrics(result)
    processes = check_cpu(result, up.pid)
    assert list(processes) == [up.pid]
    assert set(processes[up.pid]) == {"dyn up", "frontend", "processor", *WORKERS}
    assert "dyn up, worker[0-3], processor, frontend" in output  # in starting order


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd is not installed (etcd-server)")
def test_an_etcd_the_run_started_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = yaml.safe_load(GRAPH.read_text())
    endpoint = f"http://127.0.0.1:{free_port()}"
    doc["discovery"] = {"backend": "etcd", "options": {"endpoints": endpoint, "start": True}}
    graph = tmp_path / "kv_etcd.yaml"
    graph.write_text(yaml.safe_dump(doc))
    with start(graph, tmp_path, monkeypatch, "--transport", "tcp") as up:
        etcd_pid = up.record()["etcd_pid"]
        _, result = bench(up.url, tmp_path / "r.json")
    processes = check_cpu(result, up.pid)
    assert processes[etcd_pid] == ["etcd"]
    check_metrics(result)


def test_a_server_that_is_no_run_here_has_no_cpu_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with start(GRAPH, tmp_path, monkeypatch, "--layout", "one-process") as up:
        # Another state folder: the bench knows no run behind this URL.
        monkeypatch.setenv("DYN_STATE_DIR", str(tmp_path / "elsewhere"))
        output, result = bench(up.url, tmp_path / "r.json")
    assert result["server_cpu"] is None
    assert output.count("is not a `dyn up` run on this machine") == 1
    assert "Server CPU" not in output
    assert result["completed"] == PROMPTS
