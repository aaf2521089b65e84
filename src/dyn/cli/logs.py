"""``dyn logs``: print (and follow) the log files of a run.

Role processes log to a file each; dyn up logs to ``up.log``, which also holds the
lines of the roles that run inside it (the in-process launcher)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO

import typer

from dyn.cli._common import expected_errors, target_run

if TYPE_CHECKING:
    from dyn.state import RunDir

__all__ = ["logs"]

# How often -f looks for new lines.
FOLLOW_POLL_S = 0.2


@expected_errors
def logs(
    role: Annotated[
        str | None, typer.Argument(help="One role, e.g. backend or worker[1]. Default: all.")
    ] = None,
    run: Annotated[
        str | None,
        typer.Option(
            help="A run id (or its prefix; see `dyn runs`). Default: the newest live run, "
            "else the newest run."
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until Ctrl-C.")
    ] = False,
) -> None:
    """Show a run's logs: every role's and its dyn up's, or one role's.

    Lines are prefixed with their file's name when there are several. Without --run: the
    newest live run, else the newest run (so a failed start's log is one command away).

    \b
    Examples:
      dyn logs                # every role of the newest live run
      dyn logs frontend -f    # one role, following new lines
    """
    import time

    from dyn.errors import LaunchError

    target = target_run(run, any_state=True)
    run_dir = target.run
    files = sorted(run_dir.logs_dir.glob("*.log"))
    if not files and role is None:
        typer.echo(f"run {run_dir.run_id} ({target.state}) has no log yet", err=True)
    if role is not None:
        wanted = run_dir.log_path(role)
        if wanted not in files:
            wanted = _host_log(run_dir, role, files) or wanted
        if wanted not in files:
            # A log per role process, and dyn up's own ("up"): what `dyn logs NAME` takes.
            names = ", ".join(f.stem for f in files) or "none yet"
            raise LaunchError(f"run {run_dir.run_id} has no log for {role!r}; its logs: {names}")
        files = [wanted]
    width = max((len(f.stem) for f in files), default=0)
    opened: dict[Path, BinaryIO] = {}
    try:
        for path in files:
            opened[path] = path.open("rb")
            _drain(opened[path], path.stem, width, prefix=role is None)
        while follow:
            time.sleep(FOLLOW_POLL_S)
            # Roles that start later get their file later.
            for path in sorted(run_dir.logs_dir.glob("*.log")) if role is None else files:
                if path not in opened and path.exists():
                    opened[path] = path.open("rb")
                    width = max(width, len(path.stem))
                if path in opened:
                    _drain(opened[path], path.stem, width, prefix=role is None)
    except KeyboardInterrupt:
        pass
    finally:
        for f in opened.values():
            f.close()


def _drain(f: BinaryIO, name: str, width: int, *, prefix: bool) -> None:
    while raw := f.readline():
        if not raw.endswith(b"\n"):
            # Half a line: the writer is mid-way. Read it again next time.
            f.seek(-len(raw), 1)
            return
        line = raw[:-1].decode(errors="replace")
        typer.echo(f"{name:<{width}} | {line}" if prefix else line)


def _host_log(run_dir: RunDir, role: str, files: list[Path]) -> Path | None:
    """The log of the process that hosts ``role`` beside others (the auto layout's front
    processes and grouped workers log to a file named after the process's last role;
    roles inside dyn up, to dyn up's log)."""
    from dyn.errors import LaunchError
    from dyn.state import UP_LOG, read_record

    try:
        record = read_record(run_dir)
    except LaunchError:  # no record (yet), or an unreadable one
        return None
    pid = next((r.pid for r in record.roles if r.role == role), None)
    if not pid:
        return None
    up_log = run_dir.log_path(UP_LOG)
    if pid == record.pid and up_log in files:
        note = f"{role} runs inside dyn up (pid {pid}): dyn up's log, with every role's lines"
        typer.echo(note, err=True)
        return up_log
    for other in record.roles:
        path = run_dir.log_path(other.role)
        if other.pid == pid and path in files:
            typer.echo(f"{role} shares its process with {other.role}: its log", err=True)
            return path
    return None
