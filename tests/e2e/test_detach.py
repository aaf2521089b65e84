"""`dyn up --detach`, then `dyn status`, `dyn logs` and `dyn down` as a user runs them."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from _dyn_graph import ROOT, free_port, port_is_listening, run_dyn

pytestmark = pytest.mark.e2e

HELLO = ROOT / "graphs" / "hello_world.yaml"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"  # a zombie counts as gone
    except OSError:
        return False


def test_detach_status_logs_down(tmp_path: Path) -> None:
    state = tmp_path / "state"
    port = free_port()
    up = run_dyn(
        state, "up", str(HELLO), "--transport", "tcp", "--layout", "process-per-role",
        "--port", str(port), "--detach",
    )  # fmt: skip
    pids: list[int] = []
    try:
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip() == f"http://127.0.0.1:{port}"
        (run,) = (state / "runs").iterdir()
        pids.append(json.loads((run / "run.json").read_text())["pid"])

        status = run_dyn(state, "status", "--json")
        assert status.returncode == 0, status.stderr
        rows = {row["role"]: row for row in json.loads(status.stdout)["instances"]}
        assert set(rows) == {"frontend", "middle", "backend"}
        assert all(row["state"] == "healthy" and row["pid"] > 0 for row in rows.values())
        pids += [row["pid"] for row in rows.values()]
        assert all(alive(pid) for pid in pids)
        table = run_dyn(state, "status")
        assert table.returncode == 0
        assert "middle" in table.stdout

        logs = run_dyn(state, "logs", "frontend")
        assert logs.returncode == 0, logs.stderr
        assert f"listening on http://127.0.0.1:{port}" in logs.stdout

        down = run_dyn(state, "down")
        assert down.returncode == 0, down.stderr
        assert "stopped dyn up" in down.stdout
        assert not any(alive(pid) for pid in pids)
        assert not port_is_listening(port)
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, 9)


def test_a_detached_start_that_fails_is_one_error_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        up = run_dyn(tmp_path / "state", "up", str(HELLO), "--port", str(port), "--detach")
    assert up.returncode == 1, up.stderr
    # The reason the role gave, once; its log keeps the rest.
    assert up.stderr.count("\n") == 1, up.stderr
    assert up.stderr.startswith("error: "), up.stderr
    assert f"frontend 'frontend' cannot listen on 127.0.0.1:{port}" in up.stderr
    assert "(log: " in up.stderr
