"""What every launcher shares: the observer it reports progress to, and its interface."""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from pathlib import Path

import anyio

from dyn import state
from dyn.graph import GraphSpec
from dyn.settings import Settings

__all__ = [
    "LaunchObserver",
    "Launcher",
    "cancel_when_set",
    "loop_options",
    "new_record",
    "settle_heap",
]


def settle_heap() -> None:
    """Once a process serves: collect what start-up left, then freeze the rest (modules,
    roles, tables) out of the collector's way, so the collections that serving causes
    scan only what requests allocate."""
    import gc

    gc.collect()
    gc.freeze()


def loop_options() -> dict[str, bool]:
    """anyio.run's backend options for a process that serves: uvloop where it is
    installed (a dependency on every platform but Windows), asyncio's own loop elsewhere.
    Every serving process wants it: `dyn up` and each role process it starts."""
    import importlib.util

    return {"use_uvloop": importlib.util.find_spec("uvloop") is not None}


def new_record(
    run: state.RunDir,
    graph: GraphSpec,
    launcher: str,
    graph_file: str | None,
    admin_token: str | None = None,
    layout: str = "",
) -> state.RunRecord:
    """The run record of a launch that is starting (roles and URL are filled in later)."""
    return state.RunRecord(
        run_id=run.run_id,
        graph=graph.name,
        graph_file=graph_file,
        started_at=time.time(),
        pid=os.getpid(),
        launcher=launcher,
        transport=graph.transport,
        discovery=graph.discovery.backend,
        discovery_dir=str(run.discovery_dir) if graph.discovery.backend == "file" else "",
        # The record is private to the user (0600), like the token `dyn up` may have made.
        admin_token=admin_token,
        layout=layout,
    )


async def cancel_when_set(event: anyio.Event, scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` once ``event`` is set (e.g. Ctrl-C during start-up)."""
    await event.wait()
    scope.cancel()


class LaunchObserver:
    """Receives a launcher's progress. The CLI renders it; tests may record it."""

    def role_starting(self, role: str, node: str) -> None: ...
    def role_up(self, role: str, node: str, seconds: float) -> None: ...
    def metrics_targets(self, path: Path) -> None:
        """Where the run's Prometheus targets are kept (called before graph_ready)."""

    def graph_ready(self, url: str | None, seconds: float) -> None: ...
    def stopping(self) -> None: ...
    def role_stopped(self, role: str) -> None: ...


class Launcher(ABC):
    """Runs a whole graph until ``stop`` is set, then drains and stops every role.

    ``run`` returns once nothing it started is left running (no process, no listening
    socket). A role that fails to start raises :class:`~dyn.errors.LaunchError`.

    Launchers are plugins: `dyn up --launcher NAME` looks ``NAME`` up in the
    ``dyn.launchers`` entry points (or takes ``module:Class``) and calls the class with
    the graph file's path (``None`` when the graph did not come from a file). ``name``
    is what the run record and `dyn status` call the launcher.
    """

    name: str = "launcher"
    # What every role gets besides the graph; whoever starts the launch (the CLI, from
    # the environment) sets it before run().
    settings: Settings = Settings()
    # The id of a run directory made for this launch already, to use rather than make
    # one (`dyn up --detach` makes it for the process it starts; see state.create_run).
    reserved_run_id: str | None = None
    # How the graph's roles share processes, in one line (set by resolve()).
    layout_summary: str = "every role in one process"

    def __init__(self, graph_file: str | None = None) -> None:
        self.graph_file = graph_file

    def resolve(self, graph: GraphSpec) -> GraphSpec:
        """The graph as this launcher will run it (e.g. with defaults it implies)."""
        return graph

    def hurry(self) -> None:
        """A second Ctrl-C: stop waiting for drains (a launcher may kill what is left)."""
        return None  # launchers that cannot hurry keep draining

    @abstractmethod
    async def run(self, graph: GraphSpec, observer: LaunchObserver, stop: anyio.Event) -> None:
        """Start every role, report progress, wait for ``stop``, then shut down."""
