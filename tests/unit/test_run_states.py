"""Run states and the run a command targets, on real state directories with stand-in
processes (a process whose argv says dyn, like a `dyn up` or a role)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dyn import runs, state
from dyn.cli.app import app

runner = CliRunner()
DEAD_PID = 2**22 + 5  # above the kernel's pid limit: never a live process


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DYN_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path / "state"


@pytest.fixture
def dyn_process() -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "dyn"], start_new_session=True
    )
    deadline = time.monotonic() + 10
    while not runs.is_dyn_process(proc.pid):  # until the kernel shows its new argv
        assert time.monotonic() < deadline, "the stand-in process never showed its argv"
        time.sleep(0.01)
    yield proc.pid
    proc.kill()
    proc.wait()


def make_run(name: str, *, pid: int, age: float = 0.0, **kw: Any) -> state.RunDir:
    run = state.create_run(name, now=time.time() - age)
    record = state.RunRecord(
        run_id=run.run_id,
        graph=name,
        graph_file=None,
        started_at=time.time() - age,
        pid=pid,
        launcher="local",
        transport="tcp",
        discovery="file",
        discovery_dir=str(run.discovery_dir),
        **kw,
    )
    state.write_record(run, record)
    return run


def role(pid: int) -> state.RoleRecord:
    return state.RoleRecord(role="backend", component="backend", pid=pid)


def test_states(dyn_process: int) -> None:
    live = make_run("live", pid=dyn_process, roles=[role(dyn_process)])
    starting = make_run("starting", pid=dyn_process)
    orphaned = make_run("orphaned", pid=DEAD_PID, roles=[role(dyn_process)])
    killed = make_run("killed", pid=DEAD_PID, roles=[role(DEAD_PID)])
    died = make_run("died", pid=DEAD_PID)
    failed = make_run("failed", pid=DEAD_PID, outcome="failed", error="port taken")
    unrecorded = state.create_run("unrecorded")
    got = {s.run: (s.state, s.reason) for s in runs.run_statuses()}
    assert got[live] == ("live", "")
    assert got[starting] == ("starting", "")
    assert got[orphaned][0] == "orphaned"
    assert f"`dyn down {orphaned.run_id}`" in got[orphaned][1]
    assert got[killed] == ("stopped", f"dyn up (pid {DEAD_PID}) was killed")
    assert got[died] == ("failed", f"dyn up (pid {DEAD_PID}) ended before the graph served")
    assert got[failed] == ("failed", "port taken")
    assert got[unrecorded] == ("starting", "")  # a detached dyn up still importing
    os.utime(unrecorded.path, (time.time() - 600, time.time() - 600))
    assert runs.run_status(unrecorded).state == "failed"


def test_the_newest_live_run_is_the_target_and_a_note_says_so(dyn_process: int) -> None:
    older = make_run("older", pid=dyn_process, age=60, roles=[role(dyn_process)])
    newer = make_run("newer", pid=dyn_process, age=30, roles=[role(dyn_process)])
    make_run("failed", pid=DEAD_PID, outcome="failed", error="port taken")
    for run in (older, newer):
        run.log_path("backend").write_text(f"{run.run_id}\n")
    result = runner.invoke(app, ["logs"])
    assert result.exit_code == 0, result.output
    assert f"backend | {newer.run_id}" in result.output
    assert f"note: 2 runs are live; using the newest, {newer.run_id}" in result.output


def test_logs_fall_back_to_the_newest_run() -> None:
    failed = make_run("failed", pid=DEAD_PID, outcome="failed", error="port taken")
    failed.log_path("frontend").write_text("cannot listen\n")
    result = runner.invoke(app, ["logs"])
    assert result.exit_code == 0, result.output
    assert result.output == "frontend | cannot listen\n"


def test_no_runs_at_all() -> None:
    for args in (["status"], ["scale", "backend", "2"], ["logs"], ["route"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, args
        assert result.output.startswith("error: no")
        assert "`dyn up GRAPH`" in result.output
        assert len(result.output.splitlines()) == 1
    assert runner.invoke(app, ["down"]).output.startswith("nothing to stop: there are no runs")
    assert runner.invoke(app, ["runs"]).output.startswith("no runs in ")


def test_an_explicit_run_that_ended_is_named_with_its_state() -> None:
    run = make_run("gone", pid=DEAD_PID, outcome="stopped", roles=[role(DEAD_PID)])
    for args in (["status", "--run", run.run_id], ["scale", "backend", "2", "--run", run.run_id]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1
        assert result.output.startswith(f"error: run {run.run_id} is stopped")


def test_prune_keeps_what_still_runs(dyn_process: int) -> None:
    live = make_run("live", pid=dyn_process, roles=[role(dyn_process)])
    orphaned = make_run("orphaned", pid=DEAD_PID, roles=[role(dyn_process)])
    make_run("stopped", pid=DEAD_PID, outcome="stopped")
    make_run("failed", pid=DEAD_PID, outcome="failed")
    result = runner.invoke(app, ["runs", "prune"])
    assert result.output == "removed 2 runs (1 stopped, 1 failed)\n"
    assert {r.run for r in runs.run_statuses()} == {live, orphaned}


def test_runs_table_narrows_to_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    make_run("a-graph-with-a-long-name", pid=DEAD_PID, outcome="failed", error="x" * 300)
    monkeypatch.setenv("COLUMNS", "80")
    result = runner.invoke(app, ["runs"])
    table = result.output.split("\n\n")[0].splitlines()
    assert table[0].split() == ["RUN", "STATE", "STARTED", "LAUNCHER"]
    assert all(len(line) <= 80 for line in table)
    wide = runner.invoke(app, ["runs", "--wide"]).output.splitlines()
    assert wide[0].split() == ["RUN", "STATE", "GRAPH", "STARTED", "LAUNCHER", "URL"]


def test_a_command_waits_for_a_run_that_is_still_starting(
    dyn_process: int, capsys: pytest.CaptureFixture[str]
) -> None:
    from dyn.cli.route import frontend_url

    run = make_run("starting", pid=dyn_process)

    def serve_soon() -> None:
        time.sleep(0.5)
        record = state.read_record(run)
        record.roles, record.frontend_url = [role(dyn_process)], "http://127.0.0.1:1"
        state.write_record(run, record)

    writer = threading.Thread(target=serve_soon)
    writer.start()
    try:
        assert frontend_url(None, wait_s=10) == "http://127.0.0.1:1"
    finally:
        writer.join()
    assert f"waiting for run {run.run_id} to serve" in capsys.readouterr().err


def stand_in(argv0: str, *args: str) -> subprocess.Popen[bytes]:
    """A live process whose command line is ``argv0 ... args`` (a stand-in etcd)."""
    proc = subprocess.Popen(
        [argv0, "-c", "import time; time.sleep(60)", *args],
        executable=sys.executable,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[0] != argv0.encode():
        assert time.monotonic() < deadline, "the stand-in process never showed its argv"
        time.sleep(0.01)
    return proc


def test_a_killed_runs_etcd_keeps_it_orphaned_and_unpruned() -> None:
    run = make_run("etcd", pid=DEAD_PID, roles=[role(DEAD_PID)])
    other = make_run("reused", pid=DEAD_PID, roles=[role(DEAD_PID)])
    etcd = stand_in("/usr/bin/etcd", f"--data-dir={run.path / 'etcd'}")
    try:
        for each in (run, other):  # the other run's etcd pid is now someone else's etcd
            record = state.read_record(each)
            record.etcd_pid = etcd.pid
            state.write_record(each, record)
        status = runs.run_status(run)
        assert status.state == "orphaned"
        assert f"its etcd (pid {etcd.pid}) still runs" in status.reason
        assert runs.run_status(other).state == "stopped"
        assert (
            runner.invoke(app, ["runs", "prune"]).output == "removed 1 run (1 stopped, 0 failed)\n"
        )
        assert run.path.is_dir()
    finally:
        etcd.kill()
        etcd.wait()
    assert runs.run_status(run).state == "stopped"


def test_roles_with_pidfiles_keep_a_killed_run_orphaned(dyn_process: int, tmp_path: Path) -> None:
    pidfile = tmp_path / "worker.pid"
    pidfile.write_text(f"{dyn_process}\n")
    local = state.RoleRecord(
        role="worker",
        component="worker",
        node="node2",
        host="127.0.0.2",
        pid=dyn_process,
        pidfile=str(pidfile),
    )
    here = make_run("here", pid=DEAD_PID, roles=[local])
    remote = make_run(
        "remote",
        pid=DEAD_PID,
        roles=[
            state.RoleRecord(
                role="worker",
                component="worker",
                node="gpu7",
                host="10.1.2.3",
                pid=4242,
                pidfile="/home/u/.local/state/dyn/pids/x/worker.pid",
            )
        ],
    )
    assert runs.run_status(here).state == "orphaned"
    status = runs.run_status(remote)
    assert status.state == "orphaned"
    assert "1 role(s) on node(s) gpu7 may still run" in status.reason
    assert runner.invoke(app, ["runs", "prune"]).output.startswith("nothing to prune")
    pidfile.unlink()  # the role exited and removed its pidfile
    assert runs.run_status(here).state == "stopped"


def test_an_error_after_the_graph_served_ends_the_run_stopped_with_its_reason(
    dyn_process: int,
) -> None:
    """`dyn up ... | head -1`: dyn up dies of a broken pipe after it served. The run
    served, so it is stopped, not failed, and keeps why it ended; before serving, the
    same error is a failed start."""
    from dyn.cli.up import _record_end

    served = make_run("served", pid=DEAD_PID)
    _record_end(served, BrokenPipeError(32, "Broken pipe"), served=True)
    never = make_run("never", pid=DEAD_PID)
    _record_end(never, BrokenPipeError(32, "Broken pipe"), served=False)
    got = {s.run: (s.state, s.reason) for s in runs.run_statuses()}
    assert got[served] == ("stopped", "BrokenPipeError: [Errno 32] Broken pipe")
    assert got[never] == ("failed", "BrokenPipeError: [Errno 32] Broken pipe")
    table = runner.invoke(app, ["runs"]).output
    assert table.count("  └ BrokenPipeError: [Errno 32] Broken pipe") == 2, table
