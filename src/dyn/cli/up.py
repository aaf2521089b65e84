"""``dyn up``: run a graph until Ctrl-C or SIGTERM, then drain and exit 0."""

from __future__ import annotations

import enum
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dyn.cli._common import expected_errors
from dyn.settings import API_KEY_ENV, RUN_ID_ENV, Settings

if TYPE_CHECKING:
    import logging

    from dyn.graph import GraphSpec
    from dyn.launch.base import Launcher, LaunchObserver
    from dyn.state import RunDir

__all__ = ["LogLevel", "up"]


# How much of a failed start's reason its run record keeps.
_REASON_CHARS = 500

# Help panels of `dyn up --help`.
_GRAPH = "Graph overrides"
_RUN = "Running"
_LOGS = "Logs"


class LogLevel(enum.StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


@expected_errors
def up(
    ctx: typer.Context,
    graph_file: Annotated[
        Path, typer.Argument(help="The graph to run, e.g. graphs/hello_world.yaml.")
    ],
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            "-p",
            min=1,
            max=65535,
            help="The frontend's port. Default: the graph's (8000 in the examples).",
            rich_help_panel=_GRAPH,
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override COMPONENT.KEY=VALUE (a component field or config key; VALUE is YAML). "
            "Repeatable.",
            metavar="COMPONENT.KEY=VALUE",
            rich_help_panel=_GRAPH,
        ),
    ] = None,
    transport: Annotated[
        str | None,
        typer.Option(
            help="How roles call each other: inproc (one process), tcp or grpc. "
            "Default: the graph's.",
            rich_help_panel=_GRAPH,
        ),
    ] = None,
    layout: Annotated[
        str | None,
        typer.Option(
            help="How the roles share processes: auto (a rule of the core count: half the "
            "cores' worth of front processes sharing the port, each other component's "
            "replicas over at most one process per core; one process on one core or for "
            "the inproc transport), one-process or process-per-role. Default: the graph's, "
            "else auto.",
            rich_help_panel=_RUN,
        ),
    ] = None,
    front_processes: Annotated[
        int | None,
        typer.Option(
            "--front-processes",
            min=1,
            max=64,
            help="The auto layout's front processes (frontend + processor, sharing the "
            "port). Default: half the cores, at least 1, at most 8.",
            rich_help_panel=_RUN,
        ),
    ] = None,
    launcher: Annotated[
        str | None,
        typer.Option(
            help="inprocess (every role in this process, over the graph's transport), local "
            "(processes on this machine, as the layout says) or ssh (each role on the node "
            "the graph places it on). Default: ssh for a graph that places roles on nodes, "
            "else what the layout needs.",
            rich_help_panel=_RUN,
        ),
    ] = None,
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="Try a graph that places roles on nodes on this machine: each node's "
            "roles run as processes bound to a loopback address of its own (127.0.0.1, "
            "127.0.0.2, ...), with etcd on loopback if it is installed, else file "
            "discovery.",
            rich_help_panel=_RUN,
        ),
    ] = False,
    discovery: Annotated[
        str | None,
        typer.Option(
            help="memory, file or etcd (overrides the graph). Default: file when local.",
            rich_help_panel=_GRAPH,
        ),
    ] = None,
    log_level: Annotated[
        LogLevel,
        typer.Option(case_sensitive=False, help="How much the roles log.", rich_help_panel=_LOGS),
    ] = LogLevel.info,
    json_logs: Annotated[
        bool,
        typer.Option("--json-logs", help="Log one JSON object per line.", rich_help_panel=_LOGS),
    ] = False,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar=API_KEY_ENV,
            show_envvar=True,
            help="Clients must send 'Authorization: Bearer KEY' (all but /health, /metrics).",
            rich_help_panel=_RUN,
        ),
    ] = None,
    detach: Annotated[
        bool,
        typer.Option(
            "--detach",
            "-d",
            help="Run in the background: print the frontend's URL once it serves, then exit. "
            "See `dyn status`, `dyn logs`, `dyn down`.",
            rich_help_panel=_RUN,
        ),
    ] = False,
) -> None:
    """Run a graph: start its roles and serve until Ctrl-C.

    Shows each role coming up, then the URL to call and a curl line to try. Ctrl-C (or
    SIGTERM, or `dyn down`) drains the frontend, stops every role and exits 0. The graph's
    own settings apply unless an option below overrides them.

    \b
    Examples:
      dyn up graphs/hello_world.yaml
      dyn up graphs/kv_routing.yaml --port 8080 --set worker.replicas=2
      dyn up graphs/disagg.yaml --layout one-process
      dyn up graphs/kv_routing.yaml --detach   # then: dyn status, dyn down
    """
    import anyio
    from rich.console import Console

    from dyn.observability.logs import setup_logging

    if detach:
        from dyn.cli.detach import detach_up, rerun_args

        # The same command line without --detach; the key goes by environment, not argv.
        argv = rerun_args(ctx, drop=("detach", "api_key"))
        # The graph is loaded here too, so a bad one fails before anything starts.
        graph = resolve_graph(graph_file, list(set_ or ()), port, transport, discovery, layout)
        typer.echo(detach_up(graph.name, argv, api_key))
        return
    setup_logging(log_level.value, json_logs=json_logs)
    import dataclasses

    # The environment is read here, once. Roles get these settings from the launcher:
    # the key in memory or a role process's environment, never in the graph the launcher
    # writes to the run directory, so it never lands on disk.
    settings = dataclasses.replace(
        Settings.from_env(), log_level=log_level.value, json_logs=json_logs, api_key=api_key
    )
    graph = resolve_graph(graph_file, list(set_ or ()), port, transport, discovery, layout)
    if local:
        graph, launcher = on_this_machine(graph, launcher)
    settings = _admin_token_for(graph, settings)
    console = Console(stderr=True, highlight=False)
    summary = None
    if launcher is None:
        launcher, graph, summary = default_launcher(graph)
    chosen = choose_launcher(graph, launcher, str(graph_file))
    if summary is not None:
        chosen.layout_summary = summary
    if front_processes is not None:
        from dyn.errors import LaunchError
        from dyn.launch.local import LocalLauncher

        if not isinstance(chosen, LocalLauncher):
            raise LaunchError(
                "--front-processes applies to the auto layout's front processes; this run "
                f"is {chosen.layout_summary}"
            )
        chosen.front_processes = front_processes
    chosen.settings = settings
    # Under --detach, the parent made this run's directory (it logs there) and named it.
    detached_run = os.environ.get(RUN_ID_ENV) or None
    graph = chosen.resolve(graph)
    from dyn.cli._observer import ConsoleObserver
    from dyn.launch.base import loop_options
    from dyn.state import UP_LOG

    run = _record_start(graph, chosen, str(graph_file), detached_run)
    chosen.reserved_run_id = run.run_id
    observer = ConsoleObserver(
        console,
        graph,
        chosen.layout_summary,
        detached_run=detached_run,
        admin_token=chosen.settings.admin_token or None,
    )
    # A detached dyn up's output is its up.log already; an attached one copies its log
    # records there, so `dyn logs` shows the roles that run inside this process.
    log_file = None if detached_run else _log_to(run.log_path(UP_LOG))
    try:
        anyio.run(_serve, graph, chosen, observer, backend_options=loop_options())
    except BaseException as exc:
        _record_end(run, exc, served=observer.ready)
        raise
    else:
        _record_end(run, None, served=observer.ready)
    finally:
        if log_file is not None:
            import logging

            logging.getLogger("dyn").removeHandler(log_file)
            log_file.close()


def _record_start(
    graph: GraphSpec, launcher: Launcher, graph_file: str, reserved: str | None
) -> RunDir:
    """Make the run's directory and record this dyn up in it before the launcher starts,
    so a start that fails is recorded too (the launcher takes the directory over)."""
    from dyn import state
    from dyn.launch.base import new_record

    run = state.create_run(graph.name, reserved=reserved)
    admin_token = launcher.settings.admin_token
    record = new_record(run, graph, launcher.name, graph_file, admin_token, launcher.layout_summary)
    state.write_record(run, record)
    return run


def _record_end(run: RunDir, exc: BaseException | None, *, served: bool) -> None:
    """Mark the run stopped, or failed if the graph never served; an error ending a run
    that served is kept as its reason, in one line (`dyn runs` shows it)."""
    from dyn import state
    from dyn.errors import DynError

    if exc is None or isinstance(exc, KeyboardInterrupt):
        state.finish_run(run, "stopped")
        return
    reasons = [
        str(leaf) if isinstance(leaf, DynError) else f"{type(leaf).__name__}: {leaf}"
        for leaf in _leaves(exc)
    ]
    # One line: a launch error may quote the role's last log lines below its reason.
    reason = " ".join(" ".join(dict.fromkeys(reasons)).split())
    state.finish_run(run, "stopped" if served else "failed", reason[:_REASON_CHARS])


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _log_to(path: Path) -> logging.Handler:
    """Copy dyn's log records to ``path`` too, formatted as on stderr."""
    import logging

    from dyn.observability.logs import ROOT

    logger = logging.getLogger(ROOT)
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)  # no empty file
    if logger.handlers:
        handler.setFormatter(logger.handlers[0].formatter)
    logger.addHandler(handler)
    return handler


def on_this_machine(graph: GraphSpec, launcher: str | None) -> tuple[GraphSpec, str]:
    """`--local`: the graph with its nodes on loopback addresses, run by the local
    launcher; says in one line where each node runs and which discovery it uses."""
    import sys

    from dyn.errors import LaunchError
    from dyn.launch import one_machine

    if launcher not in (None, "local"):
        raise LaunchError(f"--local runs every role here as a process; drop --launcher {launcher}")
    graph, note = one_machine.on_this_machine(graph)
    sys.stderr.write(note + "\n")
    return graph, "local"


def _admin_token_for(graph: GraphSpec, settings: Settings) -> Settings:
    """A frontend bound beyond loopback only serves admin routes with a token: make one
    for this run (kept in the private run record, where `dyn status` and `dyn route` find
    it) unless the graph or the environment sets one."""
    import dataclasses
    import secrets

    from dyn.launch.role_classes import role_of

    if settings.admin_token:
        return settings
    for spec in graph.components:
        role = role_of(spec)
        if role.admin_routes and role.admin_token_required(spec.config):
            return dataclasses.replace(settings, admin_token=secrets.token_urlsafe(24))
    return settings


def resolve_graph(
    path: Path,
    overrides: list[str],
    port: int | None,
    transport: str | None = None,
    discovery: str | None = None,
    layout: str | None = None,
) -> GraphSpec:
    """Load the graph once with every override applied, so every launcher sees one graph."""
    import dataclasses

    from dyn import plugins
    from dyn.errors import SpecError
    from dyn.graph import load_graph
    from dyn.launch.role_classes import role_class, role_of

    graph = load_graph(path, overrides, resolve_role=role_class)
    if port is not None:
        takers = [(c.name, role_of(c).port_field) for c in graph.components]
        taker = next(((name, field) for name, field in takers if field), None)
        if taker is None:
            raise SpecError([f"{path}: --port needs a graph with a frontend component"])
        graph = load_graph(
            path, [*overrides, f"{taker[0]}.{taker[1]}={port}"], resolve_role=role_class
        )
    if transport is not None:
        plugins.import_path("dyn.transports", transport)  # a clear error for unknown names
        name = plugins.canonical(transport)
        # Another transport's options mean nothing to this one; the same keeps them.
        options = graph.transport_options if name == graph.transport else {}
        graph = dataclasses.replace(graph, transport=name, transport_options=options)
    if discovery is not None:
        plugins.import_path("dyn.discovery", discovery)
        graph = switch_discovery(graph, plugins.canonical(discovery), str(path))
    if layout is not None:
        from dyn.graph.model import LAYOUTS

        if layout not in LAYOUTS:
            raise SpecError([f"--layout: unknown layout {layout!r}; choose one of "
                             f"{', '.join(LAYOUTS)}"])  # fmt: skip
        graph = dataclasses.replace(graph, layout=layout)
    return graph


def switch_discovery(graph: GraphSpec, backend: str, source: str) -> GraphSpec:
    """The graph with another discovery backend: the graph's options that the new
    backend does not take (they were written for the old one) are dropped, in one note."""
    import dataclasses
    import sys
    from types import MappingProxyType

    current = graph.discovery
    if backend == current.backend:
        return graph
    accepted = discovery_options(backend)
    kept = {k: v for k, v in current.options.items() if k in accepted}
    dropped = sorted(set(current.options) - set(kept))
    if dropped:
        sys.stderr.write(
            f"note: --discovery {backend} drops the {current.backend} option(s) "
            f"{', '.join(dropped)} of {source}\n"
        )
    changed = dataclasses.replace(current, backend=backend, options=MappingProxyType(kept))
    return dataclasses.replace(graph, discovery=changed)


def discovery_options(backend: str) -> set[str]:
    """The options a discovery backend takes: its constructor's named keyword
    parameters (``ttl_s`` is a field of its own; ``**options`` names none)."""
    import inspect

    from dyn import plugins

    parameters = inspect.signature(plugins.load("dyn.discovery", backend)).parameters.values()
    named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {p.name for p in parameters if p.kind in named and p.name != "ttl_s"}


def default_launcher(graph: GraphSpec) -> tuple[str, GraphSpec, str | None]:
    """The launcher a graph runs with when none is named, the graph it runs, and (for
    one process) what its layout says: ssh for a graph that places roles on nodes, else
    what its layout needs on this machine (in one process, roles call each other
    in-process whatever the graph's transport)."""
    import dataclasses

    from dyn.launch.layout import core_count, plan_layout

    if graph.has_nodes():
        return "ssh", graph, None
    layout = plan_layout(graph, core_count())
    if layout.mode == "one-process":
        return "inprocess", dataclasses.replace(graph, transport="inproc"), layout.describe()
    return "local", graph, None


def choose_launcher(graph: GraphSpec, name: str | None, graph_file: str) -> Launcher:
    """The launcher asked for (a name in the ``dyn.launchers`` entry points), or the
    natural one for the graph (:func:`default_launcher`)."""
    from dyn import plugins
    from dyn.errors import LaunchError
    from dyn.launch.base import Launcher

    if name is None:
        name, _, _ = default_launcher(graph)
    if ":" not in name and not plugins.is_known("dyn.launchers", name):
        # "in-process" and "in_process" name the built-in "inprocess" too.
        name = name.replace("-", "").replace("_", "")
    cls = plugins.load("dyn.launchers", name)
    if not (isinstance(cls, type) and issubclass(cls, Launcher)):
        raise LaunchError(f"{name!r} is not a launcher (it must derive dyn.launch.base.Launcher)")
    launcher: Launcher = cls(graph_file)
    return launcher


async def _serve(graph: GraphSpec, launcher: Launcher, observer: LaunchObserver) -> None:
    import anyio

    stop = anyio.Event()
    hurried: list[bool] = []

    async def watch_signals(scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                if hurried:
                    scope.cancel()  # a third: give up at once
                    return
                if stop.is_set():
                    hurried.append(True)
                    launcher.hurry()  # a second Ctrl-C: stop waiting for the drain
                    continue
                stop.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(watch_signals, tasks.cancel_scope)
        await launcher.run(graph, observer, stop)
        tasks.cancel_scope.cancel()
