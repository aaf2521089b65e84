"""The local launcher: one OS process per role replica on this machine.

Every run gets its own state directory (run record, resolved graph, discovery files,
logs). Each role process is started with ``python -m dyn _role``, in its own session
so a Ctrl-C in the terminal reaches only ``dyn up``, which then stops the roles in
order: frontends first, then dependents before their dependencies.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import anyio

from dyn import state
from dyn.errors import LaunchError
from dyn.graph import GraphSpec
from dyn.launch.etcd_server import LocalEtcd, start_local_etcd
from dyn.launch.processes import ProcessLauncher, RoleProcess

__all__ = ["LocalLauncher"]


class LocalLauncher(ProcessLauncher):
    """Role processes on this machine; an etcd of its own when the graph asks for one."""

    name = "local"

    def __init__(self, graph_file: str | None = None) -> None:
        super().__init__(graph_file)
        self._etcd: LocalEtcd | None = None

    def resolve(self, graph: GraphSpec) -> GraphSpec:
        if graph.transport == "inproc":
            raise LaunchError(
                "the inproc transport cannot cross processes; "
                "use --transport tcp or --transport grpc with the local launcher"
            )
        # Separate processes cannot share memory: in-memory discovery becomes file
        # discovery in the run's own folder.
        if graph.discovery.backend != "memory":
            return graph
        return dataclasses.replace(
            graph, discovery=dataclasses.replace(graph.discovery, backend="file")
        )

    def role_command(self, run: state.RunDir, graph_path: Path, role: RoleProcess) -> list[str]:
        return [sys.executable, "-m", "dyn", "_role", str(graph_path), role.component,
                str(role.replica)]  # fmt: skip

    async def before_roles(
        self,
        graph: GraphSpec,
        run: state.RunDir,
        record: state.RunRecord,
        tasks: anyio.abc.TaskGroup,
    ) -> None:
        """Starts a local etcd if the graph's discovery needs one."""
        self._etcd = await start_local_etcd(graph, run, record)

    async def after_roles(self) -> None:
        if self._etcd is not None:
            await self._etcd.stop()
