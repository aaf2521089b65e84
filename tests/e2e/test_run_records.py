"""Run records as a user meets them: a failed `dyn up` next to a live one, `dyn runs`,
`dyn runs prune`, `dyn logs` of an in-process run, and what dyn up says as it stops."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _dyn_graph import ROOT, DynUp, free_port, run_dyn

pytestmark = pytest.mark.e2e

HELLO = ROOT / "graphs" / "hello_world.yaml"
# A local-launcher run: role processes, and a control channel for `dyn scale`.
PROCESSES = ("--transport", "tcp", "--layout", "process-per-role")


def runs_json(state: Path) -> list[dict[str, Any]]:
    result = run_dyn(state, "runs", "--json")
    assert result.returncode == 0, result.stderr
    runs: list[dict[str, Any]] = json.loads(result.stdout)["runs"]
    return runs


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """A state directory of its own; whatever runs in it is stopped after the test."""
    path = tmp_path / "state"
    yield path
    if (path / "runs").is_dir():
        for run in (path / "runs").iterdir():
            run_dyn(path, "down", run.name, "--timeout", "10")


def detach(state: Path, port: int, *options: str) -> str:
    up = run_dyn(state, "up", str(HELLO), "--port", str(port), *options, "--detach")
    assert up.returncode == 0, up.stderr
    return up.stdout.strip()


def failed_up(state: Path, port: int, *options: str) -> subprocess.CompletedProcess[str]:
    """`dyn up` on a port that is taken: it fails to start."""
    up = run_dyn(state, "up", str(HELLO), "--port", str(port), *options)
    assert up.returncode == 1, up.stderr
    return up


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_a_failed_start_is_not_the_run_commands_target(state: Path) -> None:
    port = free_port()
    detach(state, port, *PROCESSES)
    failed_up(state, port, *PROCESSES)  # the same port: its frontend cannot listen

    scale = run_dyn(state, "scale", "backend", "2")
    assert scale.returncode == 0, scale.stderr
    assert "backend: 2 replica(s) running" in scale.stdout
    status = run_dyn(state, "status", "--json")
    assert status.returncode == 0, status.stderr
    roles = {row["role"] for row in json.loads(status.stdout)["instances"]}
    assert roles == {"frontend", "middle", "backend[0]", "backend[1]"}

    down = run_dyn(state, "down")
    assert "stopped dyn up" in down.stdout
    for command in (("status",), ("scale", "backend", "1")):
        line = one_error_line(run_dyn(state, *command))
        assert "no graph is running here: no live run" in line
        assert "`dyn up GRAPH`" in line
        assert "`dyn runs`" in line
    nothing = run_dyn(state, "down")
    assert nothing.returncode == 0
    assert nothing.stdout.startswith("nothing to stop: no run is live")


def test_runs_lists_states_and_prune_removes_ended_runs(state: Path) -> None:
    live_port, stopped_port = free_port(), free_port()
    detach(state, stopped_port)
    assert "stopped dyn up" in run_dyn(state, "down").stdout
    detach(state, live_port)
    failed = failed_up(state, live_port)
    runs = runs_json(state)
    assert [run["state"] for run in runs] == ["failed", "live", "stopped"]
    assert "cannot listen" in runs[0]["reason"]
    assert failed.stderr.count("cannot listen") >= 1
    assert runs[1]["url"] == f"http://127.0.0.1:{live_port}"
    assert {run["graph"] for run in runs} == {"hello_world"}
    assert {run["launcher"] for run in runs} == {"inprocess"}

    table = run_dyn(state, "runs")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["RUN", "STATE", "GRAPH", "STARTED", "LAUNCHER", "URL"]
    for run in runs:
        (row,) = (line for line in lines if line.startswith(run["run_id"]))
        assert row.split()[1] == run["state"]
    assert "dyn down ID" in table.stdout
    assert "`dyn runs prune` removes the 2 stopped and failed run(s)" in table.stdout

    prune = run_dyn(state, "runs", "prune")
    assert prune.returncode == 0, prune.stderr
    assert prune.stdout.strip() == "removed 2 runs (1 stopped, 1 failed)"
    assert [run["state"] for run in runs_json(state)] == ["live"]
    assert (
        run_dyn(state, "runs", "prune").stdout.strip()
        == "nothing to prune: no stopped or failed runs"
    )


def test_runs_help() -> None:
    for args, text in ((("runs", "--help"), "prune"), (("runs", "prune", "--help"), "stopped")):
        result = subprocess.run(
            [sys.executable, "-m", "dyn", *args], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert text in result.stdout


def test_logs_of_an_in_process_run(state: Path, tmp_path: Path) -> None:
    up = DynUp(str(HELLO), log_path=tmp_path / "up.log", state=state)
    try:
        up.wait_serving(timeout=60)
        logs = run_dyn(state, "logs")
        assert logs.returncode == 0, logs.stderr
        assert f"listening on {up.url}" in logs.stdout
        frontend = run_dyn(state, "logs", "frontend")
        assert frontend.returncode == 0, frontend.stderr
        assert f"listening on {up.url}" in frontend.stdout
        assert "runs inside dyn up" in frontend.stderr
    finally:
        assert up.stop(signal.SIGINT) == 0
    assert "stopping: draining the frontend" in up.log()


def test_no_drain_line_after_a_failed_start(state: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up = DynUp(str(HELLO), log_path=tmp_path / "up.log", port=port, state=state)
        assert up.wait(timeout=60) == 1
    assert "cannot listen" in up.log()
    assert "draining" not in up.log()
    assert [run["state"] for run in runs_json(state)] == ["failed"]


def test_a_detached_run_says_how_to_stop_it(state: Path) -> None:
    detach(state, free_port())
    (run,) = (state / "runs").iterdir()
    log = (run / "logs" / "up.log").read_text()
    assert f"stop it with `dyn down {run.name}`" in log
    assert "Ctrl-C" not in log
