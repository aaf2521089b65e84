"""The body of one role process, as the local and ssh launchers start it.

``dyn _role GRAPH COMPONENT REPLICA`` loads the resolved graph the launcher wrote, serves
that one role instance, prints a ready line the launcher waits for, and on SIGTERM,
SIGINT or its stdin closing (the launcher died) drains and exits 0.

On another node (the ssh launcher) GRAPH is ``-``: the first line of stdin is a JSON
object with the graph's YAML and the secrets the launcher passes on (cluster secret, API
key, TLS files), so neither lands in a command line. With ``--pidfile-run RUN`` the role
becomes its own process group and writes its pid to
``<state>/pids/RUN/<role>.pid``, removed when it exits; teardown signals that group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio

from dyn.graph import GraphSpec, load_graph
from dyn.launch._roles import make_discovery, make_transport, start_role, stop_role
from dyn.launch.base import cancel_when_set, loop_options, settle_heap
from dyn.launch.role_classes import role_class
from dyn.observability.metrics_server import METRICS_URL_KEY, ProcessHealth, serve_metrics
from dyn.runtime.component import Component
from dyn.runtime.runtime import Runtime, readdress
from dyn.settings import ADMIN_TOKEN_ENV, API_KEY_ENV, ROLE_SECRET_ENV, Settings

__all__ = ["FAILED_MARK", "READY_MARK", "failure_reason", "run_role"]

# The line a role prints on stdout once it serves; the launcher parses the JSON after it.
READY_MARK = "dyn-role-ready "
# The line a role prints instead when it cannot start: JSON with "reason" (one line for
# the launcher's error) and "detail" (the traceback, for the role's log only).
FAILED_MARK = "dyn-role-failed "


def failure_reason(exc: BaseException) -> str:
    """One line saying why start-up failed: an expected error's own message, else the
    exception's type and message (a bug, whose traceback goes to the log)."""
    from dyn.errors import DynError

    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, DynError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())


def _report_failure(exc: BaseException) -> None:
    import traceback

    record = {"reason": failure_reason(exc), "detail": "".join(traceback.format_exception(exc))}
    sys.stdout.write(FAILED_MARK + json.dumps(record) + "\n")
    sys.stdout.flush()


def run_role(
    graph_path: str,
    component: str,
    replica: int,
    *,
    watch_stdin: bool,
    pidfile_run: str | None = None,
    node: str | None = None,
    settings: Settings | None = None,
    companions: tuple[tuple[str, int], ...] = (),
    report_failure: bool = False,
) -> None:
    """Serve one role instance (and ``companions``, started before it in the same
    process and runtime, which then calls between them in-process). ``settings`` are
    what the role process's CLI read from its environment (a remote role's bootstrap
    line adds the keys and the transport security it carries, which win over this
    node's own). With ``report_failure`` (a launcher started us), a failed start-up
    ends in a :data:`FAILED_MARK` line and exit code 1 instead of a raised error."""
    ready: list[bool] = []  # set once the role serves: a later error is no start-up failure
    try:
        _run_role(graph_path, component, replica, watch_stdin, pidfile_run, node, settings,
                  companions, ready)  # fmt: skip
    except Exception as exc:
        if ready or not report_failure:
            raise
        _report_failure(exc)
        raise SystemExit(1) from None


def _run_role(
    graph_path: str,
    component: str,
    replica: int,
    watch_stdin: bool,
    pidfile_run: str | None,
    node: str | None,
    settings: Settings | None,
    companions: tuple[tuple[str, int], ...],
    ready: list[bool],
) -> None:
    settings = settings or Settings()
    if graph_path == "-":
        graph, passed = _bootstrap()
        settings = dataclasses.replace(
            settings,
            api_key=passed.get(API_KEY_ENV) or settings.api_key,
            admin_token=passed.get(ADMIN_TOKEN_ENV) or settings.admin_token,
            transport=settings.transport.overridden_by(passed),
        )
    else:
        graph = load_graph(Path(graph_path), resolve_role=role_class)
    pidfile = _write_pidfile(pidfile_run, component, replica, graph) if pidfile_run else None
    try:
        anyio.run(
            _serve,
            graph,
            component,
            replica,
            watch_stdin,
            pidfile,
            node,
            settings,
            companions,
            ready,
            backend_options=loop_options(),
        )
    finally:
        if pidfile is not None:
            pidfile.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # the run's last role takes its folder
                pidfile.parent.rmdir()


def _bootstrap() -> tuple[GraphSpec, dict[str, str]]:
    """Read the graph and the passed-on secrets (by variable name) from stdin's first line."""
    from dyn.errors import LaunchError
    from dyn.graph import load_graph_text

    line = sys.stdin.buffer.readline()
    try:
        boot = json.loads(line)
        text, env = boot["graph"], boot.get("env", {})
    except (ValueError, KeyError, TypeError) as exc:
        raise LaunchError(f"expected the launcher's bootstrap line on stdin: {exc}") from exc
    passed = {k: v for k, v in env.items() if k in ROLE_SECRET_ENV and isinstance(v, str)}
    graph = load_graph_text(text, source="<graph from the launcher>", resolve_role=role_class)
    return graph, passed


def pidfile_path(run_id: str, role: str) -> Path:
    from dyn import state

    return state.state_dir() / "pids" / run_id / f"{state.safe_name(role)}.pid"


def _write_pidfile(run_id: str, component: str, replica: int, graph: GraphSpec) -> Path:
    from dyn.launch._roles import role_name

    # Its own session and process group, so that one signal reaches all of it. A
    # PermissionError means it already leads a group (sshd made it one): its pgid is its pid.
    with contextlib.suppress(PermissionError):
        os.setsid()
    path = pidfile_path(run_id, role_name(graph.component(component), replica))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n", encoding="utf-8")
    return path


async def _serve(
    graph: GraphSpec,
    component_name: str,
    replica: int,
    watch_stdin: bool,
    pidfile: Path | None,
    node_name: str | None = None,
    settings: Settings | None = None,
    companions: tuple[tuple[str, int], ...] = (),
    ready_flag: list[bool] | None = None,
) -> None:
    spec = graph.component(component_name)
    if node_name is None and spec.placement:
        node_name = spec.placement[replica % len(spec.placement)]
    node = graph.node(node_name) if node_name is not None else None
    host = node.bind if node is not None else "127.0.0.1"
    advertise = settings.advertise_host if settings else None
    if settings and (settings.bind_host or advertise):
        # Started by a cluster (dyn export k8s): every interface, or what it was told.
        host = settings.bind_host or "0.0.0.0"
    stop = anyio.Event()
    async with (
        make_discovery(graph) as discovery,
        Runtime(
            namespace=graph.namespace,
            transport=make_transport(graph, settings.transport if settings else None),
            discovery=discovery,
            node=node.name if node is not None else "local",
            host=host,
            local_calls=bool(companions),
            advertise=advertise,
        ) as runtime,
    ):
        # The process's own page: /metrics for Prometheus, /health for probes (503 until
        # every role it hosts serves, and again once it drains).
        health = ProcessHealth(sorted({name for name, _ in companions} | {component_name}))
        metrics_url = await serve_metrics(
            runtime.registry,
            host,
            runtime.tasks,
            health,
            port=settings.metrics_port if settings else 0,
        )
        if advertise:
            metrics_url = readdress(metrics_url.removesuffix("/metrics"), advertise) + "/metrics"
        runtime.metadata[METRICS_URL_KEY] = metrics_url
        runtime.tasks.start_soon(_watch_signals, stop)
        if watch_stdin:
            runtime.tasks.start_soon(_watch_stdin, stop)
        hosted: list[Component[Any]] = []
        with anyio.CancelScope() as startup:  # SIGTERM during start-up: just leave
            runtime.tasks.start_soon(cancel_when_set, stop, startup)
            for name, index in companions:
                companion = graph.component(name)
                hosted.append(
                    await start_role(runtime, graph, companion, index, node_name, settings)
                )
            component = await start_role(runtime, graph, spec, replica, node_name, settings)
        if startup.cancelled_caught:
            with anyio.CancelScope(shield=True):
                for started in reversed(hosted):
                    await stop_role(runtime, started)
            return
        ready: dict[str, Any] = {
            "pid": os.getpid(),
            "address": runtime.address,
            "instance_id": component.info.instance_id,
            "url": getattr(component, "url", None),
            "pidfile": str(pidfile) if pidfile else None,
            METRICS_URL_KEY: runtime.metadata[METRICS_URL_KEY],
            "hosted": [
                {
                    "component": c.info.component,
                    "replica": c.info.replica,
                    "instance_id": c.info.instance_id,
                }
                for c in hosted
            ],
        }
        # The instance a scrape target of several role instances is labelled with
        # (launch/targets.py): the first by component name and replica.
        first = min([component, *hosted], key=lambda c: (c.info.component, c.info.replica))
        health.instance = first.info.instance_id
        health.state = "serving"
        settle_heap()
        sys.stdout.write(READY_MARK + json.dumps(ready) + "\n")
        sys.stdout.flush()
        if ready_flag is not None:
            ready_flag.append(True)
        await stop.wait()
        health.state = "draining"
        with anyio.CancelScope(shield=True):
            # The one named first (a frontend stops taking requests), then its companions.
            for started in [component, *reversed(hosted)]:
                await stop_role(runtime, started)


async def _watch_signals(stop: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()


async def _watch_stdin(stop: anyio.Event) -> None:
    # The launcher holds our stdin open; EOF means it is gone, so nobody would stop us.
    # Wait on the event loop rather than in a thread, so shutdown never waits on a read.
    fd = sys.stdin.fileno()
    while True:
        await anyio.wait_readable(fd)
        if not os.read(fd, 4096):
            break
    stop.set()
