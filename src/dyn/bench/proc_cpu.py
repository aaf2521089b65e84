"""CPU time of a process, read from Linux's ``/proc/PID/stat``.

``utime`` and ``stime`` (fields 14 and 15, see proc(5)) count the clock ticks a process
spent in user and kernel mode, every thread of it included; ``os.sysconf("SC_CLK_TCK")``
says how many ticks make a second. ``starttime`` (field 22) tells a process from a later
one that was given the same pid. Nothing here imports the rest of dyn.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcStat", "clock_ticks", "cpu_seconds", "parse_stat", "read_cmdline", "read_stat"]

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    """The fields of one ``/proc/PID/stat`` line that CPU accounting needs."""

    pid: int
    comm: str  # the executable's name, at most 15 characters
    utime: int  # clock ticks in user mode
    stime: int  # clock ticks in kernel mode
    starttime: int  # clock ticks after boot at which the process started

    @property
    def ticks(self) -> int:
        return self.utime + self.stime


def parse_stat(text: str) -> ProcStat:
    """One ``/proc/PID/stat`` line. Raises ValueError if it is not one.

    The name sits in parentheses and may itself hold spaces and parentheses, so the
    fields are counted from the last ``)``.
    """
    open_at, close_at = text.find("("), text.rfind(")")
    if open_at < 0 or close_at < open_at:
        raise ValueError(f"not a /proc/PID/stat line: {text[:80]!r}")
    pid = int(text[:open_at])
    rest = text[close_at + 1 :].split()
    # rest[0] is field 3 (state), so field N is rest[N - 3].
    if len(rest) < 20:
        raise ValueError(f"a /proc/PID/stat line with too few fields: {text[:80]!r}")
    return ProcStat(
        pid=pid,
        comm=text[open_at + 1 : close_at],
        utime=int(rest[11]),
        stime=int(rest[12]),
        starttime=int(rest[19]),
    )


def clock_ticks() -> int:
    """Clock ticks per second (100 on nearly every Linux)."""
    return int(os.sysconf("SC_CLK_TCK"))


def read_stat(pid: int, proc: Path = PROC) -> ProcStat | None:
    """The process's stat, or None if there is no such process (or no /proc)."""
    try:
        return parse_stat((proc / str(pid) / "stat").read_text())
    except (OSError, ValueError):
        return None


def read_cmdline(pid: int, proc: Path = PROC) -> list[str]:
    """The process's arguments ([] if it is gone, a zombie, or unreadable)."""
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def cpu_seconds(before: ProcStat, after: ProcStat, ticks_per_s: int) -> float:
    """CPU seconds the process spent between two readings."""
    return (after.ticks - before.ticks) / ticks_per_s
