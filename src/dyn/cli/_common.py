"""Shared CLI plumbing: expected errors become one line and a non-zero exit; long option
lists are shown in help panels; the run a command targets when it names none."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

from dyn.errors import DynError, SpecError

if TYPE_CHECKING:
    from dyn.runs import RunStatus

__all__ = [
    "EXIT_ERROR",
    "EXIT_SPEC",
    "PanelledCommand",
    "PanelledGroup",
    "WideOption",
    "expected_errors",
    "print_error",
    "target_run",
]

P = ParamSpec("P")
R = TypeVar("R")

EXIT_ERROR = 1
EXIT_SPEC = 2  # a bad graph file or override, like a usage error

# `--wide` of the commands that draw tables: their columns are chosen to fit the terminal.
WideOption = Annotated[
    bool,
    typer.Option(
        "--wide", help="Show every column, however wide; by default the table fits the terminal."
    ),
]


def print_error(message: str) -> None:
    for line in message.splitlines() or [""]:
        sys.stderr.write(f"error: {line}\n")


def expected_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Print a :class:`DynError` as ``error: ...`` lines and exit non-zero; let bugs raise."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except SpecError as exc:
            # Problems already read "FILE:LINE: FIELD: message", like a compiler's.
            sys.stderr.write(f"{exc}\n")
            raise typer.Exit(EXIT_SPEC) from None
        except DynError as exc:
            print_error(str(exc))
            raise typer.Exit(EXIT_ERROR) from None
        except BaseExceptionGroup as group:
            # Task groups wrap what their tasks raise; unwrap when every leaf is expected.
            leaves = _leaves(group)
            if not all(isinstance(leaf, DynError) for leaf in leaves):
                raise
            for leaf in leaves:
                print_error(str(leaf))
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


def target_run(
    run: str | None, *, orphaned: bool = False, any_state: bool = False, extra: str = ""
) -> RunStatus:
    """The run named by ``run`` (an id or a unique prefix, in whatever state), else the
    newest live one (or starting; with ``orphaned``, also one whose dyn up was killed
    while its roles run).

    With none of those: the newest run at all if ``any_state`` (its logs still tell
    what happened), else one ``error:`` line saying so (``extra`` adds another way out).
    When several runs are live, a note on stderr says which one was taken.
    """
    from dyn import runs, state
    from dyn.errors import LaunchError

    if run is not None:
        return runs.run_status(state.find_run(run))
    running = runs.running_runs(orphaned=orphaned)
    if running:
        if len(running) > 1:
            sys.stderr.write(
                f"note: {len(running)} runs are live; using the newest, "
                f"{running[0].run.run_id} (--run ID picks another; `dyn runs` lists them)\n"
            )
        return running[0]
    if any_state:
        every = runs.run_statuses()
        if every:
            return every[0]
        raise LaunchError(
            f"no runs in {state.state_dir()}; start one with `dyn up GRAPH` "
            "(e.g. dyn up graphs/hello_world.yaml)"
        )
    raise runs.no_live_run(extra)


class PanelledCommand(TyperCommand):
    """A command whose --help lists options under their ``rich_help_panel`` headings.

    Typer draws panels only with rich markup, which ``dyn`` leaves off so that help does
    not import rich; this draws them as plain sections instead.
    """

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format_panels(self, ctx, formatter)


class PanelledGroup(TyperGroup):
    """A group whose --help lists its own options by panel, then its commands."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format_panels(self, ctx, formatter)
        self.format_commands(ctx, formatter)


def _format_panels(command: TyperCommand | TyperGroup, ctx: Any, formatter: Any) -> None:
    # ``Any``: the click types typer builds on are private to it.
    arguments: list[tuple[str, str]] = []
    panels: dict[str, list[tuple[str, str]]] = {"Options": []}  # unpanelled ones first
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        if param.param_type_name == "argument":
            arguments.append(record)
        else:
            panel = getattr(param, "rich_help_panel", None) or "Options"
            panels.setdefault(panel, []).append(record)
    if arguments:
        with formatter.section("Arguments"):
            formatter.write_dl(arguments)
    for title, records in panels.items():
        if records:
            with formatter.section(title):
                formatter.write_dl(records)
