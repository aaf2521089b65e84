"""The local launcher: one OS process per role replica on this machine.

Every run gets its own state directory (run record, resolved graph, discovery files,
logs). Each role process is started with ``python -m dyn _role``, in its own session
so a Ctrl-C in the terminal reaches only ``dyn up``, which then stops the roles in
order: frontends first, then dependents before their dependencies.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import sys
from pathlib import Path

import anyio
import msgspec

from dyn import state
from dyn.errors import LaunchError
from dyn.graph import GraphSpec
from dyn.launch.etcd_server import LocalEtcd, start_local_etcd
from dyn.launch.layout import (
    Layout,
    ProcessPlan,
    apply_layout,
    core_count,
    plan_layout,
    process_plans,
)
from dyn.launch.nats_server import LocalNats, start_local_nats
from dyn.launch.processes import ProcessLauncher, RoleProcess
from dyn.launch.role_classes import role_of
from dyn.net import free_port

__all__ = ["LocalLauncher"]

_log = logging.getLogger("dyn.launch")


class LocalLauncher(ProcessLauncher):
    """Role processes on this machine; an etcd of its own when the graph asks for one."""

    name = "local"

    def __init__(self, graph_file: str | None = None) -> None:
        super().__init__(graph_file)
        self._etcd: LocalEtcd | None = None
        self._nats: LocalNats | None = None
        self.layout: Layout | None = None
        # Pins the auto layout's front processes (dyn up --front-processes).
        self.front_processes: int | None = None

    def resolve(self, graph: GraphSpec) -> GraphSpec:
        # A graph that says inproc gets tcp between its processes (apply_layout).
        layout = plan_layout(graph, core_count(), front_processes=self.front_processes)
        if layout.requested == "one-process":
            raise LaunchError(
                "--layout one-process runs every role in this process; drop --launcher "
                "local (or use --launcher inprocess)"
            )
        if layout.mode == "one-process":  # auto chose it; this launcher runs processes
            layout = Layout(layout.requested, "process-per-role", layout.cores)
        if self.front_processes is not None and layout.mode != "front":
            raise LaunchError(
                "--front-processes applies to the auto layout's front processes; this "
                f"graph runs {layout.describe(graph)}"
            )
        for spec in graph.components:
            if spec.name in layout.front and spec.replicas not in (1, layout.front_processes):
                _log.warning(
                    "%s.replicas=%d is replaced by the layout's %d front process(es): one "
                    "%s beside each frontend (--layout process-per-role keeps the count)",
                    spec.name, spec.replicas, layout.front_processes, spec.name,
                )  # fmt: skip
        self.layout = layout
        graph = apply_layout(_fixed_port(graph, layout), layout)
        self.layout_summary = layout.describe(graph)
        # Separate processes cannot share memory: in-memory discovery becomes file
        # discovery in the run's own folder.
        if graph.discovery.backend != "memory":
            return graph
        return dataclasses.replace(
            graph, discovery=dataclasses.replace(graph.discovery, backend="file")
        )

    def process_plans(self, graph: GraphSpec) -> list[ProcessPlan]:
        if self.layout is None or self.layout.mode != "front":
            return super().process_plans(graph)
        return process_plans(graph, self.layout)

    def role_record(self, graph: GraphSpec, role: RoleProcess) -> state.RoleRecord:
        record = super().role_record(graph, role)
        if role.node != "local" and graph.has_nodes():
            record.host = graph.node(role.node).bind  # where its roles listen
        return record

    def role_command(self, run: state.RunDir, graph_path: Path, role: RoleProcess) -> list[str]:
        hosted = [f"--with={name}:{replica}" for name, replica in role.companions]
        return [sys.executable, "-m", "dyn", "_role", str(graph_path), role.component,
                str(role.replica), *hosted]  # fmt: skip

    async def before_roles(
        self,
        graph: GraphSpec,
        run: state.RunDir,
        record: state.RunRecord,
        tasks: anyio.abc.TaskGroup,
    ) -> None:
        """Checks a shared HTTP port is free, then starts a local etcd if the graph's
        discovery needs one, and a nats-server if its transport does."""
        check_shared_ports(graph)
        self._etcd = await start_local_etcd(graph, run, record)
        self._nats = await start_local_nats(graph, run, record, self.settings.transport)

    async def after_roles(self) -> None:
        if self._nats is not None:  # after the last role: they all used it
            await self._nats.stop()
        if self._etcd is not None:
            await self._etcd.stop()


def _fixed_port(graph: GraphSpec, layout: Layout) -> GraphSpec:
    """Port 0 (any free port) would give each replica of a shared-port frontend a port
    of its own: pick one for them all."""
    if layout.mode != "front":
        return graph
    components = []
    for spec in graph.components:
        field = role_of(spec).port_field
        if spec.name in layout.front and field and getattr(spec.config, field) == 0:
            host = getattr(spec.config, "host", "127.0.0.1")
            config = msgspec.structs.replace(spec.config, **{field: free_port(host)})
            spec = dataclasses.replace(spec, config=config)
        components.append(spec)
    return dataclasses.replace(graph, components=tuple(components))


def check_shared_ports(graph: GraphSpec) -> None:
    """Fail before anything starts if a port the front processes will share is taken.

    Their sockets set SO_REUSEPORT, which would also let them join another program's
    listener (one of the same user that set it too) instead of failing: so the port is
    first bound here without it, which fails if anyone holds it.
    """
    for spec in graph.components:
        field = role_of(spec).port_field
        config = spec.config
        if not field or not getattr(config, "reuse_port", False):
            continue
        host, port = getattr(config, "host", "127.0.0.1"), getattr(config, field)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise LaunchError(
                    f"{spec.name!r} cannot listen on {host}:{port}: {exc.strerror}; "
                    "choose another port with --port"
                ) from exc
