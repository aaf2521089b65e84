"""``dyn _role``: the body of one role process (started by launchers, not by hand)."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer

from dyn.cli._common import expected_errors
from dyn.settings import JSON_LOGS_ENV, LOG_LEVEL_ENV

__all__ = ["role"]


@expected_errors
def role(
    graph_file: Annotated[
        str, typer.Argument(help="The resolved graph the launcher wrote ('-': from stdin).")
    ],
    component: Annotated[str, typer.Argument(help="The component to serve.")],
    replica: Annotated[int, typer.Argument(help="Which replica of it.")] = 0,
    watch_stdin: Annotated[
        bool, typer.Option(help="Stop when stdin closes (the launcher went away).")
    ] = True,
    log_level: Annotated[
        str, typer.Option(envvar=LOG_LEVEL_ENV, help="debug, info, warning or error.")
    ] = "info",
    json_logs: Annotated[
        bool, typer.Option("--json-logs", envvar=JSON_LOGS_ENV, help="One JSON object per line.")
    ] = False,
    pidfile_run: Annotated[
        str | None,
        typer.Option(help="Become a process group and write a pidfile under this run id."),
    ] = None,
    with_: Annotated[
        list[str] | None,
        typer.Option(
            "--with",
            metavar="COMPONENT:REPLICA",
            help="Also serve this role instance in this process, started first. Repeatable.",
        ),
    ] = None,
) -> None:
    """Serve one role instance until SIGTERM."""
    from dyn.launch.role_main import run_role
    from dyn.observability.logs import setup_logging
    from dyn.settings import Settings

    setup_logging(log_level, json_logs=json_logs)
    # This process's edge: the launcher put the run's settings in its environment.
    settings = dataclasses.replace(Settings.from_env(), log_level=log_level, json_logs=json_logs)
    companions = []
    for item in with_ or ():
        name, _, index = item.rpartition(":")
        if not name or not index.isdigit():
            raise typer.BadParameter(
                f"expected COMPONENT:REPLICA, got {item!r}", param_hint="--with"
            )
        companions.append((name, int(index)))
    run_role(
        graph_file,
        component,
        replica,
        watch_stdin=watch_stdin,
        pidfile_run=pidfile_run,
        settings=settings,
        companions=tuple(companions),
        report_failure=True,
    )
