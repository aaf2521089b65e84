"""Which runs are live: the state of each run directory, and the run a command targets
when it is given none (the newest live one).

A run's state comes from its record and this machine's processes:

- ``live``: its dyn up process runs and the graph serves;
- ``starting``: its dyn up runs, the graph does not serve yet;
- ``orphaned``: its dyn up is gone (killed) but processes it started still run: role
  processes, the etcd it started (whose data is in the run's folder), or roles on other
  nodes (which cannot be seen from here until `dyn down` has stopped them);
  `dyn down RUN` stops them, and `dyn runs prune` keeps the run for it;
- ``stopped``: it ended after serving (Ctrl-C, `dyn down`, or an error once it served:
  the record keeps that reason), or its dyn up was killed;
- ``failed``: it ended before the graph served; the record keeps the reason.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from dyn import state
from dyn.errors import LaunchError
from dyn.net import is_loopback

__all__ = [
    "ACTIVE",
    "RunStatus",
    "is_dyn_process",
    "no_live_run",
    "prune",
    "run_status",
    "run_statuses",
    "running_runs",
    "runs_its_etcd",
]

# States whose processes still run on this machine: never pruned.
ACTIVE = frozenset({"live", "starting", "orphaned"})
# A run directory without a record is a `dyn up --detach` child still importing for this
# long (it records itself as its first act); past it, its dyn up died before that.
_UNRECORDED_GRACE_S = 30.0


@dataclass(frozen=True)
class RunStatus:
    """One run directory, its record (None if it has none) and its state."""

    run: state.RunDir
    record: state.RunRecord | None
    state: str
    reason: str = ""  # why a run failed, or what is left of an orphaned one


def _argv(pid: int) -> list[bytes] | None:
    """The command line of live process ``pid``; None if it is gone (or a zombie)."""
    import os

    if pid <= 0 or pid == os.getpid():
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b") ", 1)[1][:1] == b"Z":
                return None  # a zombie: dead, not yet reaped
    except (OSError, IndexError):
        return None
    return argv


def is_dyn_process(pid: int) -> bool:
    """Whether ``pid`` is alive and runs dyn (pids get reused once a run has ended)."""
    argv = _argv(pid) or []
    return any(arg == b"dyn" or arg.endswith(b"/dyn") for arg in argv)


def runs_its_etcd(run: state.RunDir, pid: int | None) -> bool:
    """Whether the etcd this run started still runs: ``pid`` is alive, is an etcd, and its
    command line names this run's folder (its data dir), so a reused pid does not count."""
    argv = _argv(pid or 0)
    if not argv or not Path(argv[0].decode(errors="replace")).name.startswith("etcd"):
        return False
    folder = str(run.path).encode()
    return any(folder in arg for arg in argv[1:])


def runs_its_nats(run: state.RunDir, pid: int | None) -> bool:
    """Whether the nats-server this run started still runs (its config file is in the
    run's folder, so a reused pid does not count)."""
    argv = _argv(pid or 0)
    if not argv or Path(argv[0].decode(errors="replace")).name != "nats-server":
        return False
    folder = str(run.path).encode()
    return any(folder in arg for arg in argv[1:])


def _may_run(role: state.RoleRecord) -> bool:
    """Whether a role with a pidfile (started over ssh) may still run. One on this machine
    is checked through its pidfile (it removes it as it exits); one on another node cannot
    be seen from here, so it may run until `dyn down` has stopped it."""
    assert role.pidfile is not None
    if not is_loopback(role.host):
        return True
    try:
        pid = int(Path(role.pidfile).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return False
    return is_dyn_process(pid)


def _leftovers(run: state.RunDir, record: state.RunRecord) -> list[str]:
    """What a killed dyn up left running, one phrase each."""
    left: list[str] = []
    local = [r for r in record.roles if not r.pidfile and r.pid != record.pid]
    running = sum(is_dyn_process(r.pid) for r in local)
    if running:
        left.append(f"{running} role process(es) still run")
    remote = [r for r in record.roles if r.pidfile and _may_run(r)]
    if remote:
        nodes = ", ".join(sorted({r.node for r in remote}))
        left.append(f"{len(remote)} role(s) on node(s) {nodes} may still run")
    if runs_its_etcd(run, record.etcd_pid):
        left.append(f"its etcd (pid {record.etcd_pid}) still runs")
    if runs_its_nats(run, record.nats_pid):
        left.append(f"its nats-server (pid {record.nats_pid}) still runs")
    return left


def run_status(run: state.RunDir) -> RunStatus:
    try:
        record = state.read_record(run)
    except LaunchError as exc:
        if not run.record_path.exists():
            try:
                age = time.time() - run.path.stat().st_mtime
            except OSError:
                age = _UNRECORDED_GRACE_S
            if age < _UNRECORDED_GRACE_S:
                return RunStatus(run, None, "starting")
            return RunStatus(run, None, "failed", "dyn up ended before it recorded the run")
        return RunStatus(run, None, "failed", str(exc))
    if record.outcome is not None:
        return RunStatus(run, record, record.outcome, record.error or "")
    if is_dyn_process(record.pid):
        return RunStatus(run, record, "live" if record.roles else "starting")
    left = _leftovers(run, record)
    if left:
        return RunStatus(
            run,
            record,
            "orphaned",
            f"dyn up (pid {record.pid}) is gone but {' and '.join(left)}; "
            f"stop them with `dyn down {run.run_id}`",
        )
    if record.roles:
        return RunStatus(run, record, "stopped", f"dyn up (pid {record.pid}) was killed")
    return RunStatus(
        run, record, "failed", f"dyn up (pid {record.pid}) ended before the graph served"
    )


def run_statuses() -> list[RunStatus]:
    """Every run, newest first."""
    return [run_status(run) for run in state.list_runs()]


def running_runs(*, orphaned: bool = False) -> list[RunStatus]:
    """The live and starting runs (and, if asked, the orphaned ones), newest first."""
    wanted = ACTIVE if orphaned else ACTIVE - {"orphaned"}
    return [s for s in run_statuses() if s.state in wanted]


def no_live_run(extra: str = "") -> LaunchError:
    """The one-line error of a command that needs a live run and finds none."""
    statuses = run_statuses()
    if statuses:
        newest = statuses[0]
        where = f"no live run (the newest, {newest.run.run_id}, {newest.state})"
    else:
        where = f"no runs in {state.state_dir()}"
    return LaunchError(
        f"no graph is running here: {where}; start one with `dyn up GRAPH`{extra}, "
        "or see `dyn runs`"
    )


def prune() -> dict[str, int]:
    """Remove the directories of stopped and failed runs; how many of each."""
    removed = {"stopped": 0, "failed": 0}
    for status in run_statuses():
        if status.state in removed:
            shutil.rmtree(status.run.path, ignore_errors=True)
            removed[status.state] += 1
    return removed
