"""Per-run state directories and run records."""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path

import pytest

from dyn import state
from dyn.errors import LaunchError
from dyn.settings import RUN_ID_ENV
from dyn.state import RoleRecord, RunDir, RunRecord


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "state"
    monkeypatch.setenv("DYN_STATE_DIR", str(home))
    return home


def record(run: RunDir, started_at: float = 1000.0, **kw: object) -> RunRecord:
    return RunRecord(
        run_id=run.run_id,
        graph="hello",
        graph_file="examples/hello.yaml",
        started_at=started_at,
        pid=4242,
        launcher="process",
        transport="tcp",
        discovery="file",
        discovery_dir=str(run.discovery_dir),
        **kw,  # type: ignore[arg-type]
    )


def test_state_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state.state_dir() == tmp_path / "state"  # DYN_STATE_DIR wins
    monkeypatch.delenv("DYN_STATE_DIR")
    assert state.state_dir() == tmp_path / "xdg" / "dyn"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")  # invalid per the XDG spec
    assert state.state_dir() == tmp_path / "home" / ".local" / "state" / "dyn"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert state.state_dir() == tmp_path / "home" / ".local" / "state" / "dyn"
    monkeypatch.setenv("DYN_STATE_DIR", "")  # empty counts as unset
    assert state.state_dir() == tmp_path / "home" / ".local" / "state" / "dyn"


def test_create_run_layout_and_modes(state_home: Path) -> None:
    run = state.create_run("hello world/v2", now=0.0)
    assert re.fullmatch(r"19700101-000000-hello-world-v2-[0-9a-f]{4}", run.run_id)
    assert run.path == state_home / "runs" / run.run_id
    assert run.record_path == run.path / "run.json"
    for d in (run.path, run.discovery_dir, run.logs_dir):
        assert d.is_dir()
        assert stat.S_IMODE(d.stat().st_mode) & 0o077 == 0
    assert run.log_path("worker[1]") == run.logs_dir / "worker[1].log"
    assert run.log_path("../etc/passwd").parent == run.logs_dir


def test_create_run_takes_over_a_reserved_directory_once(
    state_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reserved = state.create_run("hello")  # as `dyn up --detach` makes it for its child
    monkeypatch.setenv(RUN_ID_ENV, reserved.run_id)
    assert state.create_run("hello", reserved=reserved.run_id) == reserved
    # Only the argument counts: the environment is neither read nor changed.
    assert state.create_run("hello") != reserved
    assert os.environ[RUN_ID_ENV] == reserved.run_id
    state.write_record(reserved, record(reserved))
    assert state.create_run("hello", reserved=reserved.run_id) != reserved  # it has a record
    assert state.create_run("hello", reserved="no-such-run").run_id != "no-such-run"


def test_run_ids_are_unique_within_a_second() -> None:
    runs = {state.create_run("g", now=0.0).run_id for _ in range(50)}
    assert len(runs) == 50


def test_record_round_trip_is_atomic_and_private() -> None:
    run = state.create_run("hello")
    rec = record(
        run,
        frontend_url="http://127.0.0.1:8000",
        admin_token="s3cret",
        roles=[
            RoleRecord(role="frontend", component="frontend", pid=11, address="127.0.0.1:1"),
            RoleRecord(role="backend[1]", component="backend", replica=1, node="n2", pid=12),
        ],
    )
    state.write_record(run, rec)
    assert state.read_record(run) == rec
    assert stat.S_IMODE(run.record_path.stat().st_mode) == 0o600
    rec.roles.append(RoleRecord(role="middle", component="middle"))
    state.write_record(run, rec)
    assert state.read_record(run).roles[-1].role == "middle"
    assert sorted(p.name for p in run.path.iterdir()) == ["discovery", "logs", "run.json"]


def test_read_record_errors_say_which_run() -> None:
    run = state.create_run("hello")
    with pytest.raises(LaunchError, match=f"run {run.run_id} has no record"):
        state.read_record(run)
    run.record_path.write_text("{not json")
    with pytest.raises(LaunchError, match=f"cannot read the record of run {run.run_id}"):
        state.read_record(run)


def test_list_and_latest_newest_first() -> None:
    assert state.list_runs() == []
    assert state.latest_run() is None
    now = time.time()
    old = state.create_run("a", now=now - 120)
    mid = state.create_run("b", now=now - 60)
    # same second as `mid`: the record's start time breaks the tie
    mid2 = state.create_run("a", now=now - 60)
    new = state.create_run("c", now=now)  # no record yet: listed, but not "latest"
    for run, started in ((old, now - 120), (mid, now - 60), (mid2, now - 59.5)):
        state.write_record(run, record(run, started_at=started))
    assert [r.run_id for r in state.list_runs()] == [
        new.run_id,
        mid2.run_id,
        mid.run_id,
        old.run_id,
    ]
    assert state.latest_run() == mid2


def test_find_run_by_id_and_prefix() -> None:
    a = state.create_run("alpha", now=0.0)
    b = state.create_run("beta", now=0.0)
    assert state.find_run(a.run_id) == a
    assert state.find_run("19700101-000000-b") == b
    with pytest.raises(LaunchError, match=r"ambiguous; it matches .*give more of the id") as err:
        state.find_run("19700101")
    assert a.run_id in str(err.value)
    assert b.run_id in str(err.value)
    with pytest.raises(LaunchError, match="no run 'nope'; known runs: ") as err:
        state.find_run("nope")
    assert a.run_id in str(err.value)
    assert b.run_id in str(err.value)


def test_find_run_with_no_runs(state_home: Path) -> None:
    with pytest.raises(
        LaunchError, match=re.escape(f"no run 'x': there are no runs in {state_home}")
    ):
        state.find_run("x")
