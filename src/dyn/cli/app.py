"""The ``dyn`` command. Each command lives in its own module and imports its heavy
dependencies only when it runs, so ``dyn --help`` stays fast."""

from __future__ import annotations

import typer

from dyn import __version__
from dyn.cli import bench, down, export, graph_cmd, logs, role, route, runs, scale, status, up
from dyn.cli._common import PanelledCommand

__all__ = ["app", "main"]

_HELP = """Run and study distributed LLM-serving pipelines.

A graph file (graphs/*.yaml) names the roles (frontend, processor, router, workers) and
how they connect; `dyn up` runs it on this machine, or over ssh on the nodes it names.
Every command has its own --help.

\b
Try:
  dyn up graphs/hello_world.yaml          # then, in another terminal:
  curl -N localhost:8000/generate -d '{"text": "test"}'
  dyn up graphs/kv_routing.yaml --detach  # OpenAI-compatible, on :8000
  dyn route; dyn status; dyn bench; dyn down
"""

app = typer.Typer(
    name="dyn",
    help=_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(graph_cmd.app, name="graph")
app.add_typer(bench.app, name="bench")
app.add_typer(runs.app, name="runs")
app.add_typer(export.app, name="export")
app.command("up", cls=PanelledCommand)(up.up)
app.command("route")(route.route)
app.command("status")(status.status)
app.command("logs")(logs.logs)
app.command("down")(down.down)
app.command("scale")(scale.scale)
app.command("join")(scale.join)
app.command("_role", hidden=True)(role.role)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dyn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Run and study distributed LLM-serving pipelines."""


# The exit status of a process whose output reader went away (128 + SIGPIPE), as a shell
# pipeline's earlier commands report it.
EXIT_BROKEN_PIPE = 141


def main() -> None:
    try:
        app()
    except BaseException as exc:
        if not _only_broken_pipes(exc):
            raise
        # `dyn ... | head`: the reader has left, which is no error of dyn's. Python would
        # print a traceback, and fail again flushing stdout at exit: point it elsewhere.
        import os
        import sys

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_BROKEN_PIPE)


def _only_broken_pipes(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_broken_pipes(inner) for inner in exc.exceptions)
    return isinstance(exc, BrokenPipeError)
