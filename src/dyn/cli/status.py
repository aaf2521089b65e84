"""``dyn status``: every role instance of a running graph, its state and its load.

States: ``starting`` (started, not yet registered), ``healthy``, ``draining``,
``unhealthy`` (started, gone from discovery, dead) and ``ejected`` (registered, but a
caller skips it after failed calls; ``ejected_s`` gives the back-off left).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dyn.cli._common import WideOption, expected_errors, target_run

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from dyn.cli._table import Column
    from dyn.state import RoleRecord, RunRecord

__all__ = ["fetch_status", "status"]


def _columns() -> list[Column]:
    from dyn.cli._table import Column

    # In display order; the priority says what a narrow terminal keeps first: which role,
    # is it well, where (node, pid, address), then its load.
    return [
        Column("role", 0),
        Column("replica", 9, "right"),
        Column("node", 2),
        Column("host", 8),
        Column("pid", 3, "right"),
        Column("address", 4),
        Column("state", 0),
        Column("uptime", 7, "right"),
        Column("in-flight", 5, "right"),
        Column("kv usage", 6, "right"),
    ]


COLUMNS = tuple(column.header for column in _columns())


@expected_errors
def status(
    url: Annotated[
        str | None,
        typer.Option(help="The frontend's base URL. Default: the run's (see --run)."),
    ] = None,
    run: Annotated[
        str | None,
        typer.Option(
            help="A run id (or its prefix; see `dyn runs`). Default: the newest live run here."
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.")
    ] = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Refresh the table live until Ctrl-C.")
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between refreshes with --watch.")
    ] = 1.0,
    wide: WideOption = False,
) -> None:
    """Show every role instance of a running graph: where, health, load.

    One row per instance: its node, pid and address, its state (starting, healthy,
    draining, unhealthy or ejected) and its load; the process layout under the table.

    \b
    Examples:
      dyn status
      dyn status --watch --interval 2
      dyn status --json | jq '.instances[] | {role, state}'
    """
    import json
    import time

    from rich.console import Console
    from rich.live import Live

    record = None if url else _run_record(run)
    base = _url(url, record)
    if json_out:
        typer.echo(json.dumps(fetch_status(base, record), indent=2))
        return
    from dyn.cli._table import print_table

    console = Console()
    width = None if wide else console.width
    if not watch:
        print_table(console, render(fetch_status(base, record), console, width))
        return
    try:
        with Live(render(fetch_status(base, record), console, width), console=console) as live:
            while True:
                time.sleep(interval)
                live.update(render(fetch_status(base, record), console, width))
    except KeyboardInterrupt:
        pass


def _run_record(run: str | None) -> RunRecord:
    """The record of the run named, else of the newest live one; one clear error if it
    has no frontend to ask."""
    from dyn import state
    from dyn.errors import LaunchError

    target = target_run(run, extra=" or pass --url")
    record = target.record or state.read_record(target.run)
    if target.state not in ("live", "starting"):
        why = f": {target.reason}" if target.reason else ""
        raise LaunchError(
            f"run {record.run_id} is {target.state}{why}; `dyn runs` lists the live runs"
        )
    if not record.frontend_url:
        raise LaunchError(
            f"run {record.run_id} has no frontend URL "
            + ("yet: it is still starting" if target.state == "starting" else "(no HTTP role)")
            + "; or pass --url"
        )
    return record


def _url(url: str | None, record: RunRecord | None) -> str:
    from dyn.cli.route import frontend_url

    if url is None and record is not None and record.frontend_url:
        return record.frontend_url
    return frontend_url(url)


def fetch_status(base: str, record: RunRecord | None = None) -> dict[str, Any]:
    """The frontend's ``/admin/status``, plus roles the run started that have not
    registered (still starting, or dead)."""
    import httpx

    from dyn.errors import LaunchError

    headers = {}
    from dyn.settings import Settings

    token = (record.admin_token if record else None) or Settings.from_env().admin_token
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = httpx.get(f"{base}/admin/status", headers=headers, timeout=10)
    except httpx.TransportError as exc:
        raise LaunchError(f"cannot reach {base}: {exc}; is the graph running?") from exc
    if response.status_code >= 400:
        raise LaunchError(f"{base}/admin/status answered {response.status_code}: {response.text}")
    data: dict[str, Any] = response.json()
    if record is not None:
        _add_unregistered(data, record)
        if record.layout:
            data["layout"] = record.layout
    return data


def _add_unregistered(data: dict[str, Any], record: RunRecord) -> None:
    listed = {(row["component"], row["replica"]) for row in data["instances"]}
    for role in record.roles:
        if (role.component, role.replica) in listed:
            continue
        data["instances"].append(
            {
                "role": role.role,
                "component": role.component,
                "replica": role.replica,
                "instance_id": None,
                "node": role.node,
                "host": role.host,
                "pid": role.pid,
                "address": role.address,
                "metrics_url": role.metrics_url,
                # Up but not (or no longer) in discovery: starting, or stuck.
                "state": "starting" if _alive_here(role) else "unhealthy",
                "ejected_s": None,
                "reason": "not in discovery" if not _alive_here(role) else None,
                "uptime_s": None,
                "in_flight": None,
                "kv_usage": None,
            }
        )


def _alive_here(role: RoleRecord) -> bool:
    # A pid on another node (a role with a pidfile there) cannot be checked from here.
    return not role.pidfile and _alive(role.pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_STYLE = {
    "healthy": "green",
    "starting": "yellow",
    "draining": "yellow",
    "unhealthy": "red",
    "ejected": "red",
}


def render(data: dict[str, Any], console: Console | None = None, width: int | None = None) -> Table:
    """The status table; within ``width`` columns (the most important first), or with
    every column when ``width`` is None."""
    from rich.console import Console

    from dyn.cli._table import fit_table

    rows = []
    for row in data["instances"]:
        state = row["state"]
        usage = row.get("kv_usage")
        shown = state
        if isinstance(row.get("ejected_s"), (int, float)):
            # Registered and up, but callers skip it until its back-off ends.
            shown = f"{state} for {row['ejected_s']:.1f} s"
        elif row.get("reason") and state == "unhealthy":
            shown = f"{state}: {row['reason']}"
        rows.append(
            [
                row["role"],
                str(row["replica"]),
                row["node"],
                row["host"],
                str(row["pid"] or ""),
                row["address"] or "",
                f"[{_STYLE.get(state, 'white')}]{shown}[/]",
                _duration(row.get("uptime_s")),
                "" if row.get("in_flight") is None else str(row["in_flight"]),
                f"{usage:.0%}" if isinstance(usage, (int, float)) else "",
            ]
        )
    return fit_table(
        console or Console(),
        _columns(),
        rows,
        width=width,
        title=f"namespace {data.get('namespace', '?')}",
        caption=f"layout: {data['layout']}" if data.get("layout") else None,
        wide_hint="`dyn status --wide` (or --json)",
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
