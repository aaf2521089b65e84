"""What a `dyn up` run on this machine costs in CPU: every process of it, read from
``/proc`` before and after a benchmark's measured requests.

The run record names the processes: ``dyn up`` itself, an etcd it started, and each
role's process (several roles may share one; in one-process mode all of them are
``dyn up``). Roles on other nodes cannot be read from here; they are named as not
measured. Figures are per completed request and per output token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dyn import state
from dyn.bench.proc_cpu import PROC, ProcStat, clock_ticks, read_cmdline, read_stat

__all__ = ["CpuMeter", "RunProcess", "find_local_run", "run_processes"]

UP_ROLE = "dyn up"
ETCD_ROLE = "etcd"
# Host names that all mean "this machine" in a frontend URL.
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "::", ""})


@dataclass(frozen=True)
class RunProcess:
    """One process of the run and the roles it hosts (``dyn up`` and ``etcd`` included)."""

    pid: int
    roles: tuple[str, ...]
    program: str = "dyn"  # a word its command line must hold, against a reused pid


@dataclass(frozen=True)
class RunProcesses:
    run_id: str
    processes: tuple[RunProcess, ...]
    # Roles whose process cannot be read from here, with why.
    not_measured: tuple[tuple[str, str], ...] = ()


def _same_place(a: str, b: str) -> bool:
    """Whether two base URLs name the same server (any loopback spelling is one)."""
    x, y = urlsplit(a.rstrip("/")), urlsplit(b.rstrip("/"))
    if x.port != y.port or x.scheme != y.scheme:
        return False
    hx, hy = x.hostname or "", y.hostname or ""
    return hx == hy or (hx in _LOCAL_HOSTS and hy in _LOCAL_HOSTS)


def _runs_here(pid: int, program: str, proc: Path) -> bool:
    return pid > 0 and any(program in arg for arg in read_cmdline(pid, proc))


def find_local_run(url: str | None, proc: Path = PROC) -> state.RunRecord | None:
    """The live `dyn up` run here whose frontend is ``url`` (newest first), or, with no
    URL, the newest live run, as `dyn bench` targets it; None if there is none."""
    for run in state.list_runs():
        try:
            record = state.read_record(run)
        except Exception:  # an unreadable record is just not the run we look for
            continue
        if not record.frontend_url or not _runs_here(record.pid, "dyn", proc):
            continue
        if url is None or _same_place(url, record.frontend_url):
            return record
    return None


def run_processes(record: state.RunRecord) -> RunProcesses:
    """The run's processes on this machine, each with the roles it hosts."""
    roles_of: dict[int, list[str]] = {record.pid: [UP_ROLE]}
    not_measured: list[tuple[str, str]] = []
    for role in record.roles:
        if role.pidfile or role.pid <= 0:  # a pidfile: the role runs on another node
            not_measured.append((role.role, f"on node {role.node}"))
            continue
        roles_of.setdefault(role.pid, []).append(role.role)
    processes = [RunProcess(pid, tuple(roles)) for pid, roles in roles_of.items()]
    if record.etcd_pid:
        processes.append(RunProcess(record.etcd_pid, (ETCD_ROLE,), program=ETCD_ROLE))
    return RunProcesses(record.run_id, tuple(processes), tuple(not_measured))


@dataclass
class CpuMeter:
    """Reads the run's processes; :meth:`report` turns two readings into figures."""

    run: RunProcesses
    proc: Path = PROC
    ticks_per_s: int = field(default_factory=clock_ticks)

    def read(self) -> dict[int, ProcStat]:
        """Each readable process of the run that still runs its program, by pid."""
        out: dict[int, ProcStat] = {}
        for process in self.run.processes:
            stat = read_stat(process.pid, self.proc)
            if stat is not None and _runs_here(process.pid, process.program, self.proc):
                out[process.pid] = stat
        return out

    def report(
        self,
        before: Mapping[int, ProcStat],
        after: Mapping[int, ProcStat],
        requests: int,
        output_tokens: int,
    ) -> dict[str, Any]:
        """The ``server_cpu`` section of a result (see the README's bench section)."""
        rows: list[dict[str, Any]] = []
        not_measured = [{"roles": [role], "reason": why} for role, why in self.run.not_measured]
        total = 0  # clock ticks, so that the sum has no rounding error
        for process in self.run.processes:
            first, last = before.get(process.pid), after.get(process.pid)
            if first is None or last is None or first.starttime != last.starttime:
                reason = "not running" if first is None else "exited during the run"
                not_measured.append({"roles": list(process.roles), "reason": reason})
                continue
            ticks = last.ticks - first.ticks
            total += ticks
            figures = _per(ticks / self.ticks_per_s, requests, output_tokens)
            rows.append({"pid": process.pid, "roles": list(process.roles), **figures})
        return {
            "run_id": self.run.run_id,
            "requests": requests,
            "output_tokens": output_tokens,
            **_per(total / self.ticks_per_s, requests, output_tokens),
            "processes": rows,
            "not_measured": not_measured,
        }


def _per(seconds: float, requests: int, output_tokens: int) -> dict[str, Any]:
    # Rounded well below a clock tick's resolution, only to drop float noise.
    return {
        "cpu_s": round(seconds, 6),
        "ms_per_request": round(seconds * 1e3 / requests, 6) if requests else None,
        "us_per_output_token": round(seconds * 1e6 / output_tokens, 6) if output_tokens else None,
    }
