"""``dyn up --detach``: start ``dyn up`` as a background process and wait until it serves."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from dyn import state
from dyn.errors import LaunchError

__all__ = ["detach_up"]

# Start-up of every role (30 s each at most) happens in the child; this bounds the wait.
DETACH_TIMEOUT_S = 120.0
_POLL_S = 0.1
_TAIL_LINES = 20


def detach_up(graph_name: str, argv: list[str], api_key: str | None) -> str:
    """Run ``dyn up ARGV`` detached, logging to its run's ``logs/up.log``; return its URL."""
    # The run directory exists before the child does, so its first line has a home.
    run = state.create_run(graph_name)
    log_path = run.logs_dir / "up.log"
    env = {**os.environ, state.RUN_ID_ENV: run.run_id, "PYTHONUNBUFFERED": "1"}
    if api_key:
        env["DYN_API_KEY"] = api_key
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "dyn", "up", *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # outlives this terminal and its Ctrl-C
        )
    deadline = time.monotonic() + DETACH_TIMEOUT_S
    while time.monotonic() < deadline:
        if run.record_path.exists():
            record = state.read_record(run)
            if record.frontend_url:
                return record.frontend_url
            if record.roles and child.poll() is None:
                # Every role is up but none serves HTTP: there is no URL to wait for.
                return f"run {run.run_id} is up (no frontend)"
        code = child.poll()
        if code is not None:
            raise LaunchError(
                f"dyn up exited with code {code} while starting; its log ({log_path}):\n"
                + _tail(log_path)
            )
        time.sleep(_POLL_S)
    raise LaunchError(
        f"dyn up (pid {child.pid}) has not served within {DETACH_TIMEOUT_S:.0f} s; it runs on: "
        f"see `dyn logs --run {run.run_id}`, or stop it with `dyn down {run.run_id}`"
    )


def _tail(path: os.PathLike[str]) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()[-_TAIL_LINES:]
    except OSError:
        lines = []
    return "\n".join(f"  {line}" for line in lines) or "  (no output)"
