"""Per-run state directories: what `dyn up` started, where it logs, how to reach it.

::

    <state>/runs/<run_id>/
        run.json      the run record (RunRecord), rewritten atomically as roles come up
        discovery/    the directory of the `file` discovery backend
        logs/         one log file per role process, and ``up.log``: dyn up's own log
                      (with every role's lines when they run inside dyn up)

``<state>`` is the folder :data:`~dyn.settings.STATE_DIR_ENV` names, else
``$XDG_STATE_HOME/dyn``, else ``~/.local/state/dyn``. Run ids start with the UTC start
time, so they sort by age (local time would not: it repeats an hour each autumn).
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from dyn.errors import LaunchError
from dyn.settings import STATE_DIR_ENV, XDG_STATE_HOME_ENV

__all__ = [
    "UP_LOG",
    "RoleRecord",
    "RunDir",
    "RunRecord",
    "create_run",
    "find_run",
    "finish_run",
    "latest_run",
    "list_runs",
    "new_run_id",
    "read_record",
    "safe_name",
    "state_dir",
    "write_record",
]

# How many run ids an error message lists before it stops.
_MAX_LISTED = 10
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\[\]-]+")
# dyn up's own log in a run's logs/ (a detached dyn up's output, an attached one's records).
UP_LOG = "up"


def state_dir() -> Path:
    """The user's dyn state directory (not created here)."""
    explicit = os.environ.get(STATE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get(XDG_STATE_HOME_ENV)
    # The XDG spec says relative values are invalid and must be ignored.
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "dyn"
    return Path.home() / ".local" / "state" / "dyn"


def _runs_root() -> Path:
    return state_dir() / "runs"


@dataclass(frozen=True)
class RunDir:
    """One run's directory and id."""

    path: Path
    run_id: str

    @property
    def record_path(self) -> Path:
        return self.path / "run.json"

    @property
    def discovery_dir(self) -> Path:
        return self.path / "discovery"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    def log_path(self, role: str) -> Path:
        return self.logs_dir / f"{safe_name(role)}.log"


class RoleRecord(msgspec.Struct, kw_only=True):
    """One started role instance (one replica of one component)."""

    role: str
    component: str
    replica: int = 0
    node: str = "local"
    host: str = "127.0.0.1"
    pid: int = 0
    address: str | None = None
    # On another node: the role's pidfile there (its process group id is the pid in it).
    pidfile: str | None = None
    instance_id: str | None = None  # its discovery registrations end with this id
    # Its process's own Prometheus page (in one-process mode, one page for every role).
    metrics_url: str | None = None


class RunRecord(msgspec.Struct, kw_only=True):
    """What `dyn up` records about a run, for `dyn status`, `dyn logs` and `dyn down`."""

    run_id: str
    graph: str
    graph_file: str | None
    started_at: float  # seconds since the epoch
    pid: int  # of the `dyn up` process
    launcher: str
    transport: str
    discovery: str  # backend name
    discovery_dir: str
    frontend_url: str | None = None
    admin_token: str | None = None
    layout: str = ""  # how the roles share processes (launch.layout.Layout.describe)
    etcd_pid: int | None = None  # an etcd this run started (discovery option `start`)
    nats_pid: int | None = None  # a nats-server this run started (transport nats)
    # Where `dyn scale` reaches the running `dyn up` (loopback port and its token).
    control_port: int | None = None
    control_token: str | None = None
    roles: list[RoleRecord] = msgspec.field(default_factory=list)
    # Set by dyn up as it exits: "stopped" or "failed" (with the reason, one line). A
    # record without it whose dyn up is gone was ended by a signal it could not catch.
    outcome: str | None = None
    ended_at: float | None = None
    error: str | None = None


def safe_name(name: str) -> str:
    return _UNSAFE.sub("-", name).strip("-.") or "run"


def new_run_id(graph_name: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{safe_name(graph_name)}-{secrets.token_hex(2)}"


def create_run(graph_name: str, *, now: float | None = None, reserved: str | None = None) -> RunDir:
    """Create a fresh run directory (with ``discovery/`` and ``logs/``), private to the user.

    ``reserved``: the id of a run directory made already, to take over if it has no
    record yet, or only the one this process wrote. ``dyn up --detach`` makes one for its
    child, which logs there from its first line, and names it to the child in
    :data:`~dyn.settings.RUN_ID_ENV`; ``dyn up`` makes one and records itself in it
    before its launcher starts, so a failed start is recorded too.
    """
    root = _runs_root()
    if reserved and (root / reserved).is_dir() and _reservable(RunDir(root / reserved, reserved)):
        return RunDir(path=root / reserved, run_id=reserved)
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise LaunchError(
            f"cannot create the state directory {root}: {exc.strerror}; "
            f"set {STATE_DIR_ENV} to a writable folder"
        ) from exc
    while True:
        run_id = new_run_id(graph_name, now)
        path = root / run_id
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue  # two runs of one graph in one second drew the same suffix
        break
    run = RunDir(path=path, run_id=run_id)
    run.discovery_dir.mkdir(mode=0o700)
    run.logs_dir.mkdir(mode=0o700)
    return run


def _reservable(run: RunDir) -> bool:
    if not run.record_path.exists():
        return True
    try:
        return read_record(run).pid == os.getpid()
    except LaunchError:
        return False


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(RunRecord).decode


def write_record(run: RunDir, record: RunRecord) -> None:
    """Replace the run record atomically, so a reader never sees half of it."""
    tmp = run.path / f".run.json.{secrets.token_hex(4)}.tmp"
    data = msgspec.json.format(_encode(record), indent=2)
    try:
        # 0o600: the record may hold the admin token.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, run.record_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_record(run: RunDir) -> RunRecord:
    """The run's record. Raises LaunchError if it is missing or unreadable."""
    try:
        return _decode(run.record_path.read_bytes())
    except FileNotFoundError as exc:
        raise LaunchError(f"run {run.run_id} has no record yet ({run.record_path})") from exc
    except (OSError, msgspec.DecodeError) as exc:
        raise LaunchError(f"cannot read the record of run {run.run_id}: {exc}") from exc


def finish_run(run: RunDir, outcome: str, error: str | None = None) -> None:
    """Record how the run ended ("stopped" or "failed", and why), on the record as the
    launcher left it. A run without a readable record is left as it is."""
    try:
        record = read_record(run)
    except LaunchError:
        return
    record.outcome, record.ended_at, record.error = outcome, time.time(), error
    write_record(run, record)


def _started_at(run: RunDir) -> float:
    try:
        return read_record(run).started_at
    except LaunchError:
        return 0.0


def list_runs() -> list[RunDir]:
    """Every run directory, newest first."""
    root = _runs_root()
    try:
        runs = [
            RunDir(path=p, run_id=p.name)
            for p in root.iterdir()
            if p.is_dir() and not p.name.startswith(".")
        ]
    except FileNotFoundError:
        return []
    # The id's timestamp has one-second resolution; the record breaks ties.
    runs.sort(key=lambda r: (r.run_id[:15], _started_at(r), r.run_id), reverse=True)
    return runs


def latest_run() -> RunDir | None:
    """The newest run that has a record, or None (live or not: see :mod:`dyn.runs`)."""
    return next((r for r in list_runs() if r.record_path.is_file()), None)


def find_run(run_id_or_prefix: str) -> RunDir:
    """The run with this id, or the only one whose id starts with it."""
    runs = list_runs()
    for run in runs:
        if run.run_id == run_id_or_prefix:
            return run
    matches = [r for r in runs if r.run_id.startswith(run_id_or_prefix)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise LaunchError(
            f"run id prefix {run_id_or_prefix!r} is ambiguous; it matches "
            f"{_listing(matches)}; give more of the id"
        )
    if not runs:
        raise LaunchError(f"no run {run_id_or_prefix!r}: there are no runs in {_runs_root()}")
    raise LaunchError(f"no run {run_id_or_prefix!r}; known runs: {_listing(runs)}")


def _listing(runs: list[RunDir]) -> str:
    ids = [r.run_id for r in runs[:_MAX_LISTED]]
    more = len(runs) - len(ids)
    return ", ".join(ids) + (f" (and {more} more)" if more else "")
