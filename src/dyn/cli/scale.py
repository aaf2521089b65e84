"""``dyn scale`` and ``dyn join``: change how many replicas of a component serve."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dyn.cli._common import expected_errors, target_run

__all__ = ["join", "scale"]


@expected_errors
def scale(
    component: Annotated[str, typer.Argument(help="The component to scale, e.g. worker.")],
    replicas: Annotated[int, typer.Argument(min=0, help="How many replicas should run.")],
    run: Annotated[
        str | None,
        typer.Option(
            help="A run id (or its prefix; see `dyn runs`). Default: the newest live run."
        ),
    ] = None,
) -> None:
    """Change how many replicas of a running graph's component serve.

    Works for runs of the local and ssh launchers. New replicas go on the component's
    placement nodes in turn; the newest replicas are drained first (deregistered,
    in-flight requests finished, then stopped).

    \b
    Example:
      dyn scale worker 4
    """
    from dyn import state
    from dyn.errors import LaunchError
    from dyn.launch.control import send_control

    target = target_run(run)
    record = target.record or state.read_record(target.run)
    if target.state == "starting":
        raise LaunchError(f"run {record.run_id} is still starting; scale it once it serves")
    if target.state != "live":
        why = f": {target.reason}" if target.reason else ""
        raise LaunchError(
            f"run {record.run_id} is {target.state}{why}; only a live run can be scaled "
            "(`dyn runs` lists them)"
        )
    if record.control_port is None or record.control_token is None:
        raise LaunchError(
            f"run {record.run_id} cannot be scaled: its launcher ({record.launcher}) has no "
            "control channel; run the graph with --launcher local or ssh"
        )
    request = {"op": "scale", "component": component, "replicas": replicas}
    for line in send_control(record.control_port, record.control_token, request):
        typer.echo(line)


@expected_errors
def join(
    graph_file: Annotated[Path, typer.Argument(help="The graph the running roles use.")],
    component: Annotated[str, typer.Argument(help="The component to serve, e.g. worker.")],
    node: Annotated[
        str | None,
        typer.Option(help="The graph's node this machine is (its bind address and name)."),
    ] = None,
    replica: Annotated[
        int, typer.Option(min=0, help="The replica number it shows as (names its logs).")
    ] = 100,
    log_level: Annotated[
        str, typer.Option(help="How much it logs: debug, info, warning or error.")
    ] = "info",
) -> None:
    """Serve one more replica of a component from this machine.

    Runs until Ctrl-C. It registers with the graph's discovery (etcd, or a shared file
    folder), so the running graph routes to it like to any other replica. The cluster
    secret and the TLS files come from this machine's environment (see the README's
    environment variables).
    """
    from dyn.errors import LaunchError
    from dyn.graph import load_graph
    from dyn.launch.role_classes import role_class
    from dyn.launch.role_main import run_role
    from dyn.observability.logs import setup_logging
    from dyn.settings import Settings, TransportSecurity

    graph = load_graph(graph_file, resolve_role=role_class)
    if graph.discovery.backend == "memory":
        raise LaunchError(
            "a graph with in-memory discovery cannot be joined from another process; "
            "use etcd (or file) discovery"
        )
    names = [c.name for c in graph.components]
    if component not in names:
        raise LaunchError(f"no component {component!r} in {graph_file}; components: {names}")
    if node is not None and node not in [n.name for n in graph.nodes]:
        known = ", ".join(n.name for n in graph.nodes)
        raise LaunchError(f"no node {node!r} in {graph_file}; nodes: {known}")
    setup_logging(log_level)
    # This command's edge: the transport's security is read here, once.
    settings = Settings(transport=TransportSecurity.from_env())
    run_role(str(graph_file), component, replica, watch_stdin=False, node=node, settings=settings)
