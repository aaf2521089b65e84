"""``dyn up --detach``: start ``dyn up`` as a background process and wait until it serves."""

from __future__ import annotations

import enum
import os
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import typer

from dyn import settings, state
from dyn.errors import LaunchError

__all__ = ["detach_up", "rerun_args"]

# Start-up of every role (30 s each at most) happens in the child; this bounds the wait.
DETACH_TIMEOUT_S = 120.0
_POLL_S = 0.1


def detach_up(graph_name: str, argv: list[str], api_key: str | None) -> str:
    """Run ``dyn up ARGV`` detached, logging to its run's ``logs/up.log``; return its URL."""
    # The run directory exists before the child does, so its first line has a home.
    run = state.create_run(graph_name)
    log_path = run.log_path(state.UP_LOG)
    env = {**os.environ, settings.RUN_ID_ENV: run.run_id, "PYTHONUNBUFFERED": "1"}
    if api_key:
        env[settings.API_KEY_ENV] = api_key
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
            why = _why_it_ended(log_path, code)
            # The reason may name a role's log already; up.log holds the whole start-up.
            raise LaunchError(why if "(log: " in why else f"{why} (log: {log_path})")
        time.sleep(_POLL_S)
    raise LaunchError(
        f"dyn up (pid {child.pid}) has not served within {DETACH_TIMEOUT_S:.0f} s; it runs on: "
        f"see `dyn logs --run {run.run_id}`, or stop it with `dyn down {run.run_id}`"
    )


def rerun_args(ctx: typer.Context, *, drop: Collection[str] = ()) -> list[str]:
    """The arguments that run ``ctx``'s command again as the command line gave it,
    without the parameters named in ``drop``.

    Read from the parsed parameters rather than ``sys.argv``, so it holds however the
    command was invoked. Only what came from the command line is repeated: defaults are
    the child's defaults too, and values from environment variables reach it by
    inheritance. Paths become absolute, in case the child's directory differs.
    """
    arguments: list[str] = []
    options: list[str] = []
    for param in ctx.command.params:
        name = param.name
        if name is None or name in drop:
            continue
        source = ctx.get_parameter_source(name)
        if source is None or source.name != "COMMANDLINE":
            continue
        value = ctx.params[name]
        if param.param_type_name == "option":
            options += _option_args(param, value)
        else:
            values = value if param.multiple else [value]
            arguments += [_text(item) for item in values]
    return arguments + options


def _option_args(option: Any, value: Any) -> list[str]:
    # ``Any``: typer's click types are private to it; every option has these attributes.
    # The long spelling reads best in a process listing: --port over -p.
    flag = max(option.opts, key=len)
    if option.is_flag:
        # Given on the command line: the flag's on-spelling, else its --no- spelling.
        if value:
            return [flag]
        return [max(option.secondary_opts, key=len)] if option.secondary_opts else []
    values = value if option.multiple else [value]
    return [arg for item in values for arg in (flag, _text(item))]


def _text(value: Any) -> str:
    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


def _why_it_ended(path: os.PathLike[str], code: int) -> str:
    """The one line a ``dyn up`` that failed to start ended with (its ``error:`` line),
    else its exit code and last line: the log keeps the rest."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f.read().splitlines() if line.strip()]
    except OSError:
        lines = []
    reasons = [line.removeprefix("error:").strip() for line in lines if line.startswith("error:")]
    if reasons:
        return reasons[-1]
    last = f"; its last line: {lines[-1]}" if lines else " and wrote nothing"
    return f"dyn up exited with code {code} while starting{last}"
