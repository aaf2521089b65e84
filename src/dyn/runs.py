"""Which runs are live: the state of each run directory, and the run a command targets
when it is given none (the newest live one).

A run's state comes from its record and this machine's processes:

- ``live``: its dyn up process runs and the graph serves;
- ``starting``: its dyn up runs, the graph does not serve yet;
- ``orphaned``: its dyn up is gone (killed) but role processes it started still run;
  `dyn down RUN` stops them;
- ``stopped``: it ended after serving (Ctrl-C, `dyn down`), or its dyn up was killed;
- ``failed``: it ended before the graph served; the record keeps the reason.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass

from dyn import state
from dyn.errors import LaunchError

__all__ = [
    "ACTIVE",
    "RunStatus",
    "is_dyn_process",
    "no_live_run",
    "prune",
    "run_status",
    "run_statuses",
    "running_runs",
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


def is_dyn_process(pid: int) -> bool:
    """Whether ``pid`` is alive and runs dyn (pids get reused once a run has ended)."""
    import os

    if pid <= 0 or pid == os.getpid():
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b") ", 1)[1][:1] == b"Z":
                return False  # a zombie: dead, not yet reaped
    except (OSError, IndexError):
        return False
    return any(arg == b"dyn" or arg.endswith(b"/dyn") for arg in argv)


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
    left = [
        r for r in record.roles if not r.pidfile and r.pid != record.pid and is_dyn_process(r.pid)
    ]
    if left:
        return RunStatus(
            run,
            record,
            "orphaned",
            f"dyn up (pid {record.pid}) is gone but {len(left)} role process(es) still run; "
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
