"""The in-process launcher: every role of the graph in this one process and event loop."""

from __future__ import annotations

import os
import time
from typing import Any

import anyio

from dyn import state
from dyn.errors import DynError, LaunchError
from dyn.graph import ComponentSpec, GraphSpec
from dyn.launch._roles import (
    discovery_in_run,
    make_discovery,
    make_transport,
    node_of,
    role_name,
    start_role,
    stop_role,
)
from dyn.launch.base import Launcher, LaunchObserver, cancel_when_set, new_record
from dyn.launch.etcd_server import start_local_etcd
from dyn.launch.nats_server import nats_in_run, start_local_nats
from dyn.launch.role_classes import http_components
from dyn.launch.role_main import failure_reason
from dyn.launch.targets import TARGETS_FILE, ScrapePage, keep_targets, write_targets
from dyn.observability.metrics_server import METRICS_URL_KEY, ProcessHealth, serve_metrics
from dyn.runtime.component import Component
from dyn.runtime.runtime import Runtime

__all__ = ["InProcessLauncher", "start_failed"]


def start_failed(run: state.RunDir, role: str, node: str, exc: BaseException) -> str:
    """One line on why ``role`` could not start; its traceback goes to the role's log
    in the run's folder, as a role process's would."""
    import traceback

    path = run.log_path(role)
    with path.open("a", encoding="utf-8") as log:
        log.write("".join(traceback.format_exception(exc)))
    who = f"role {role}" + (f" on {node}" if node != "local" else "")
    return f"{who} could not start: {failure_reason(exc)} (log: {path})"


class InProcessLauncher(Launcher):
    """One process, one runtime, one registry: the embedded default for a single node."""

    name = "inprocess"

    def __init__(self, graph_file: str | None = None) -> None:
        super().__init__(graph_file)
        self.runtime: Runtime | None = None
        self.components: list[tuple[ComponentSpec, Component[Any]]] = []

    async def run(self, graph: GraphSpec, observer: LaunchObserver, stop: anyio.Event) -> None:
        began = time.perf_counter()
        run = state.create_run(graph.name, reserved=self.reserved_run_id)
        graph = nats_in_run(discovery_in_run(graph, run))
        record = new_record(
            run, graph, self.name, self.graph_file, self.settings.admin_token, self.layout_summary
        )
        etcd = await start_local_etcd(graph, run, record)
        nats = None
        try:
            nats = await start_local_nats(graph, run, record, self.settings.transport)
            await self._serve(graph, run, record, observer, stop, began)
        finally:
            if nats is not None:
                with anyio.CancelScope(shield=True):
                    await nats.stop()
            if etcd is not None:
                with anyio.CancelScope(shield=True):
                    await etcd.stop()

    async def _serve(
        self,
        graph: GraphSpec,
        run: state.RunDir,
        record: state.RunRecord,
        observer: LaunchObserver,
        stop: anyio.Event,
        began: float,
    ) -> None:
        async with (
            make_discovery(graph) as discovery,
            Runtime(
                namespace=graph.namespace,
                transport=make_transport(graph, self.settings.transport),
                discovery=discovery,
            ) as runtime,
        ):
            self.runtime = runtime
            # One registry for every role: one page (and one Prometheus target) for
            # them all, published with each instance as a role process publishes its own.
            health = ProcessHealth(sorted({spec.name for spec in graph.components}))
            runtime.metadata[METRICS_URL_KEY] = await serve_metrics(
                runtime.registry, runtime.host, runtime.tasks, health
            )
            targets = run.path / TARGETS_FILE
            try:
                # Ctrl-C during start-up stops the start-up, then tears down what came up.
                with anyio.CancelScope() as startup:
                    runtime.tasks.start_soon(cancel_when_set, stop, startup)
                    for spec in graph.topological_order():
                        for replica in range(spec.replicas):
                            await self._start(runtime, graph, run, spec, replica, observer)
                if startup.cancelled_caught:
                    return
                frontends = {spec.name for spec in http_components(graph)}
                url = next(
                    (getattr(c, "url", None) for s, c in self.components if s.name in frontends),
                    None,
                )
                record.frontend_url = url
                record.roles = [
                    state.RoleRecord(
                        role=role_name(spec, c.info.replica),
                        component=spec.name,
                        replica=c.info.replica,
                        node=c.info.node,
                        pid=os.getpid(),
                        address=runtime.address,
                        instance_id=c.info.instance_id,
                        metrics_url=runtime.metadata[METRICS_URL_KEY],
                    )
                    for spec, c in self.components
                ]
                state.write_record(run, record)
                page = runtime.metadata[METRICS_URL_KEY]
                own = [
                    ScrapePage(
                        page, c.info.component, c.info.replica, c.info.instance_id, c.info.node
                    )
                    for _, c in self.components
                ]
                # Labelled as launch/targets.py labels the page's target.
                first = min(own, key=lambda p: (p.component, p.replica), default=None)
                health.instance = first.instance_id if first is not None else None
                health.state = "serving"
                # Cancelled with the runtime's tasks once the run stops.
                await runtime.tasks.start(
                    keep_targets, runtime.discovery, graph.namespace, targets, lambda: own
                )
                observer.metrics_targets(targets)
                observer.graph_ready(url, time.perf_counter() - began)
                await stop.wait()
            finally:
                with anyio.CancelScope(shield=True):
                    health.state = "draining"
                    observer.stopping()
                    # Frontends first, then dependents before their dependencies, so
                    # nothing in flight loses its downstream.
                    for spec, component in reversed(self.components):
                        await stop_role(runtime, component)
                        observer.role_stopped(role_name(spec, component.info.replica))
                    self.components.clear()
                    if targets.exists():
                        write_targets(targets, [])  # nothing left to scrape

    async def _start(
        self,
        runtime: Runtime,
        graph: GraphSpec,
        run: state.RunDir,
        spec: ComponentSpec,
        replica: int,
        observer: LaunchObserver,
    ) -> None:
        role, node = role_name(spec, replica), node_of(spec, replica)
        observer.role_starting(role, node)
        t0 = time.perf_counter()
        try:
            component = await start_role(runtime, graph, spec, replica, settings=self.settings)
        except DynError:
            raise  # an expected error names its role and reason itself
        except Exception as exc:  # the role's own bug: one line here, the traceback logged
            raise LaunchError(start_failed(run, role, node, exc)) from exc
        self.components.append((spec, component))
        observer.role_up(role, node, time.perf_counter() - t0)
