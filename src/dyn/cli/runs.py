"""``dyn runs`` and ``dyn runs prune``: the runs `dyn up` recorded here, and their clean-up.

Every ``dyn up`` records its run in the state directory (see :mod:`dyn.state`), also one
that fails to start; the run's state comes from :mod:`dyn.runs`. Commands that name no
run (``dyn status``, ``dyn logs``, ``dyn scale``, ``dyn down``) take the newest live one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from dyn.cli._common import WideOption, expected_errors

if TYPE_CHECKING:
    from dyn.runs import RunStatus

__all__ = ["app"]

app = typer.Typer(
    help="List the runs `dyn up` started here: live, starting, orphaned, stopped or failed. "
    "`dyn runs prune` removes the stopped and failed ones.",
    invoke_without_command=True,
)

# Columns dropped first when the terminal is narrow (--wide keeps them).
_OPTIONAL = ("url", "graph")
_ADDRESSING = (
    "Address a run by its id (or a unique start of it):\n"
    "  dyn status --run ID, dyn logs --run ID, dyn scale C N --run ID, dyn down ID"
)


@app.callback()
@expected_errors
def runs(
    ctx: typer.Context,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.")
    ] = False,
    wide: WideOption = False,
) -> None:
    """One line per run, newest first: its id (how commands address it), state, graph,
    start time, launcher and URL; a failed run's reason below it.

    States: live (serving), starting, orphaned (dyn up was killed, its roles still run:
    `dyn down ID`), stopped, failed (ended before it served).
    """
    if ctx.invoked_subcommand is not None:
        return
    import json

    from dyn import runs as run_states
    from dyn import state

    statuses = run_states.run_statuses()
    if json_out:
        entries = [_entry(s) for s in statuses]
        typer.echo(json.dumps({"state_dir": str(state.state_dir()), "runs": entries}, indent=2))
        return
    if not statuses:
        typer.echo(
            f"no runs in {state.state_dir()}; start one with `dyn up GRAPH` "
            "(e.g. dyn up graphs/hello_world.yaml)"
        )
        return
    for line in _table(statuses, wide):
        typer.echo(line)
    typer.echo("")
    typer.echo(_ADDRESSING)
    ended = sum(s.state in ("stopped", "failed") for s in statuses)
    if ended:
        typer.echo(f"`dyn runs prune` removes the {ended} stopped and failed run(s).")


@app.command("prune")
@expected_errors
def prune() -> None:
    """Remove the records, logs and discovery files of stopped and failed runs; live,
    starting and orphaned runs stay."""
    from dyn import runs as run_states

    removed = run_states.prune()
    total = sum(removed.values())
    if not total:
        typer.echo("nothing to prune: no stopped or failed runs")
        return
    typer.echo(
        f"removed {total} run{'s' if total != 1 else ''} "
        f"({removed['stopped']} stopped, {removed['failed']} failed)"
    )


def _entry(status: RunStatus) -> dict[str, Any]:
    record = status.record
    return {
        "run_id": status.run.run_id,
        "state": status.state,
        "reason": status.reason or None,
        "graph": record.graph if record else None,
        "graph_file": record.graph_file if record else None,
        "started_at": record.started_at if record else None,
        "ended_at": record.ended_at if record else None,
        "launcher": record.launcher if record else None,
        "pid": record.pid if record else None,
        "url": record.frontend_url if record else None,
        "path": str(status.run.path),
    }


def _table(statuses: list[RunStatus], wide: bool) -> list[str]:
    import shutil
    import time

    today = time.strftime("%Y-%m-%d")

    def started(status: RunStatus) -> str:
        if status.record is None:
            return ""
        when = time.localtime(status.record.started_at)
        same_day = time.strftime("%Y-%m-%d", when) == today
        return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M", when)

    rows = [
        {
            "run": s.run.run_id,
            "state": s.state,
            "graph": s.record.graph if s.record else "",
            "started": started(s),
            "launcher": s.record.launcher if s.record else "",
            "url": (s.record.frontend_url or "") if s.record and s.state == "live" else "",
        }
        for s in statuses
    ]
    columns = ["run", "state", "graph", "started", "launcher", "url"]
    width_of = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    limit = shutil.get_terminal_size().columns
    for optional in _OPTIONAL:
        if wide or sum(width_of[c] + 2 for c in columns) - 2 <= limit:
            break
        columns.remove(optional)
    lines = [_line([c.upper() for c in columns], [width_of[c] for c in columns])]
    for status, row in zip(statuses, rows, strict=True):
        lines.append(_line([row[c] for c in columns], [width_of[c] for c in columns]))
        if status.reason:
            reason = f"  └ {status.reason}"
            lines.append(reason if wide or len(reason) <= limit else reason[: limit - 1] + "…")
    return lines


def _line(cells: list[str], widths: list[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
