"""`dyn status`, `dyn logs` and `dyn down` through typer's CliRunner, on fake runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dyn import state
from dyn.cli import status as status_cmd
from dyn.cli.app import app

runner = CliRunner()


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> state.RunDir:
    monkeypatch.setenv("DYN_STATE_DIR", str(tmp_path / "state"))
    run = state.create_run("hello")
    return run


def record(run: state.RunDir, **kw: Any) -> state.RunRecord:
    rec = state.RunRecord(
        run_id=run.run_id,
        graph="hello",
        graph_file=None,
        started_at=time.time(),
        pid=kw.pop("pid", 0),
        launcher="local",
        transport="tcp",
        discovery="file",
        discovery_dir=str(run.discovery_dir),
        **kw,
    )
    state.write_record(run, rec)
    return rec


ROW = {
    "role": "backend",
    "component": "backend",
    "replica": 0,
    "instance_id": "b1",
    "node": "local",
    "host": "127.0.0.1",
    "pid": 4242,
    "address": "tcp://127.0.0.1:9",
    "state": "healthy",
    "uptime_s": 75.0,
    "in_flight": 3,
    "kv_usage": 0.25,
}


def test_help_lists_the_commands() -> None:
    for command, text in (("status", "--watch"), ("logs", "--follow"), ("down", "--timeout")):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0
        assert text in result.output
    assert "--detach" in runner.invoke(app, ["up", "--help"]).output


def test_status_table_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def fake(base: str, rec: object = None) -> dict[str, Any]:
        seen.append(base)
        return {"namespace": "hello", "instances": [ROW]}

    monkeypatch.setattr(status_cmd, "fetch_status", fake)
    result = runner.invoke(app, ["status", "--url", "http://x:1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["instances"] == [ROW]
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(app, ["status", "--url", "http://x:1"])
    assert result.exit_code == 0, result.output
    for text in ("backend", "4242", "healthy", "1m15s", "25%"):
        assert text in result.output
    assert seen == ["http://x:1", "http://x:1"]


def test_status_table_shows_an_ejected_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    ejected = {**ROW, "role": "worker[1]", "state": "ejected", "ejected_s": 3.24}
    monkeypatch.setattr(
        status_cmd, "fetch_status", lambda base, rec=None: {"instances": [ROW, ejected]}
    )
    result = runner.invoke(app, ["status", "--url", "http://x:1", "--json"])
    assert json.loads(result.output)["instances"][1]["ejected_s"] == 3.24
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(app, ["status", "--url", "http://x:1"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "worker[1]" in line)
    assert "ejected for 3.2 s" in line


def test_status_marks_roles_missing_from_discovery(run: state.RunDir) -> None:
    rec = record(
        run,
        roles=[
            state.RoleRecord(role="backend", component="backend", pid=4242),
            state.RoleRecord(role="middle", component="middle", pid=os.getpid()),
            state.RoleRecord(role="gone", component="gone", pid=2**22 + 1),
        ],
    )
    data: dict[str, Any] = {"namespace": "hello", "instances": [dict(ROW)]}
    status_cmd._add_unregistered(data, rec)
    states = {row["role"]: row["state"] for row in data["instances"]}
    assert states == {"backend": "healthy", "middle": "starting", "gone": "unhealthy"}


def test_status_without_a_run_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DYN_STATE_DIR", str(tmp_path / "empty"))
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 1
    assert "no graph is running here" in result.output


def test_logs_all_one_and_unknown(run: state.RunDir) -> None:
    record(run)
    run.log_path("frontend").write_text("listening\n")
    run.log_path("backend").write_text("b1\nb2\nhalf a li")
    result = runner.invoke(app, ["logs"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["backend  | b1", "backend  | b2", "frontend | listening"]
    result = runner.invoke(app, ["logs", "frontend", "--run", run.run_id[:15]])
    assert result.output == "listening\n"
    result = runner.invoke(app, ["logs", "nope"])
    assert result.exit_code == 1
    assert "no log for 'nope'; its logs: backend, frontend" in result.output


def test_down_kills_roles_of_a_run_whose_up_died(run: state.RunDir) -> None:
    # A stand-in role: a process whose argv says dyn, in its own session like a real one.
    role = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "dyn"],
        start_new_session=True,
    )
    try:
        record(
            run,
            pid=2**22 + 3,  # the dead `dyn up`
            roles=[state.RoleRecord(role="backend", component="backend", pid=role.pid)],
        )
        (run.discovery_dir / "entry.json").write_text("{}")
        result = runner.invoke(app, ["down", "--timeout", "5"])
        assert result.exit_code == 0, result.output
        assert f"stopped backend (pid {role.pid})" in result.output
        assert "removed 1 discovery entry" in result.output
        assert role.wait(5) is not None
        assert list(run.discovery_dir.iterdir()) == []
        again = runner.invoke(app, ["down"])
        assert "was not running" in again.output
    finally:
        role.kill()
        role.wait()
