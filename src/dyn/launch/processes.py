"""Launchers that run each role replica as a process they watch: the base they share.

:class:`ProcessLauncher` starts the processes in dependency order, copies their output
to per-role logs with a prefix, waits for each to report ready, scales components while
the graph serves (`dyn scale`), and stops the roles in order: those that serve HTTP
first, then dependents before their dependencies. How a role's process is started and
signalled is left to the public hooks a subclass implements (:meth:`role_command` at
least); :class:`~dyn.launch.local.LocalLauncher` and :class:`~dyn.launch.ssh.SshLauncher`
are the two built in.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from abc import abstractmethod
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio
import msgspec
from anyio.abc import Process

from dyn import state
from dyn.discovery.base import Discovery
from dyn.discovery.memory import MemoryDiscovery
from dyn.errors import DiscoveryError, LaunchError
from dyn.graph import ComponentSpec, GraphSpec, dump_graph_yaml
from dyn.launch._roles import (
    READY_TIMEOUT_S,
    discovery_in_run,
    make_discovery,
    node_of,
    role_name,
)
from dyn.launch.base import Launcher, LaunchObserver, cancel_when_set, new_record
from dyn.launch.control import ControlServer
from dyn.launch.layout import ProcessPlan
from dyn.launch.nats_server import nats_in_run
from dyn.launch.role_classes import http_components, role_of
from dyn.launch.role_main import FAILED_MARK, READY_MARK
from dyn.launch.targets import TARGETS_FILE, ScrapePage, keep_targets, write_targets
from dyn.observability.metrics_server import METRICS_URL_KEY
from dyn.settings import ADVERTISE_HOST_ENV, BIND_HOST_ENV, METRICS_PORT_ENV, RUN_ID_ENV

__all__ = ["ProcessLauncher", "RoleProcess", "prepare_run"]

_log = logging.getLogger("dyn.launch")

# How long a role may take to exit after SIGTERM before it is killed.
STOP_GRACE_S = 30.0
# How long to wait for a killed role's process to be reaped.
KILL_WAIT_S = 5.0
# Log lines kept per role to show when it fails to start.
TAIL_LINES = 20


@dataclass
class RoleProcess:
    """One role replica's process, as a :class:`ProcessLauncher` tracks it."""

    role: str
    component: str
    replica: int
    node: str
    # Role instances the process hosts besides this one, started before it (the auto
    # layout's front process: a processor replica beside the frontend's).
    companions: tuple[tuple[str, int], ...] = ()
    process: Process = field(init=False)
    log: TextIO = field(init=False)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    ready: dict[str, Any] | None = None
    # Why it could not start, as its failure line said (the traceback is in its log).
    failure: str | None = None
    log_path: Path | None = None
    # How log lines are prefixed: the role, or ``node/role`` for roles on other machines.
    label: str = ""
    stopping: bool = False  # we asked it to stop (Ctrl-C, dyn scale)
    died: bool = False  # it exited by itself after it was ready
    ready_event: anyio.Event = field(default_factory=anyio.Event)
    exited: anyio.Event = field(default_factory=anyio.Event)


@dataclass
class _Scaling:
    """What `dyn scale` needs of a launch that is serving."""

    graph: GraphSpec
    run: state.RunDir
    graph_path: Path
    observer: LaunchObserver
    tasks: anyio.abc.TaskGroup
    record: state.RunRecord


def prepare_run(
    graph: GraphSpec, reserved_run_id: str | None = None
) -> tuple[state.RunDir, GraphSpec, Path]:
    """Create the run's state directory (or take over ``reserved_run_id``'s, see
    :func:`dyn.state.create_run`) and write the graph every role process loads.

    File discovery without a directory of its own gets the run's folder; a nats
    transport without servers, the address of the nats-server the run will start.
    """
    run = state.create_run(graph.name, reserved=reserved_run_id)
    resolved = nats_in_run(discovery_in_run(graph, run))
    graph_path = run.path / "graph.yaml"
    graph_path.write_text(dump_graph_yaml(resolved), encoding="utf-8")
    return run, resolved, graph_path


_NOT_INHERITED = frozenset({RUN_ID_ENV, BIND_HOST_ENV, ADVERTISE_HOST_ENV, METRICS_PORT_ENV})


def _inherited_env() -> dict[str, str]:
    """This process's environment for a role's, less the run id `dyn up --detach` gave
    this process: it names this launch's run, not anything a role takes over."""
    # Nor the settings of one process (its bind address, advertised address and fixed
    # metrics port): several role processes cannot share them.
    return {name: value for name, value in os.environ.items() if name not in _NOT_INHERITED}


class ProcessLauncher(Launcher):
    """Runs every role replica as a process of its own and watches it.

    A subclass says how a role's process starts (:meth:`role_command`, required) and may
    change the other hooks: what happens once the process exists
    (:meth:`role_spawned`), before the first role and after the last
    (:meth:`before_roles`, :meth:`after_roles`), what the run record says of a role
    (:meth:`role_record`), how a signal reaches it (:meth:`terminate`) and what to clean
    up once it is gone (:meth:`cleanup`). Hooks run in the launcher's event loop; an
    error they raise before the graph serves fails the launch.

    The process must print a ready line (``dyn _role`` does) once it serves; what it
    writes on stdout and stderr goes to its log and, prefixed, to ours.
    """

    name = "process"
    layout_summary = "one process per role replica"

    def __init__(self, graph_file: str | None = None) -> None:
        super().__init__(graph_file)
        self.roles: list[RoleProcess] = []
        self.run_dir: state.RunDir | None = None
        self._stopping = False
        self._hurry: anyio.Event | None = None  # made in run(), inside the event loop
        self._scaling: _Scaling | None = None  # set once the graph serves

    async def run(self, graph: GraphSpec, observer: LaunchObserver, stop: anyio.Event) -> None:
        """Start every role process in dependency order, serve until ``stop``, then stop
        frontends first and the rest after (see :class:`~dyn.launch.base.Launcher`)."""
        began = time.perf_counter()
        self._hurry = anyio.Event()
        run, resolved, graph_path = prepare_run(graph, self.reserved_run_id)
        self.run_dir = run
        record = new_record(
            run,
            resolved,
            self.name,
            self.graph_file,
            self.settings.admin_token,
            self.layout_summary,
        )
        state.write_record(run, record)
        async with anyio.create_task_group() as tasks:
            try:
                # Ctrl-C during start-up stops the start-up, then tears down what came up.
                with anyio.CancelScope() as startup:
                    tasks.start_soon(cancel_when_set, stop, startup)
                    await self.before_roles(resolved, run, record, tasks)
                    await self._start_all(resolved, run, graph_path, observer, tasks, began)
                if startup.cancelled_caught:
                    return
                url = next((r.ready["url"] for r in self.roles if r.ready and r.ready["url"]), None)
                record.frontend_url = url
                self._scaling = _Scaling(resolved, run, graph_path, observer, tasks, record)
                control = ControlServer(self.scale)
                await control.start(tasks)
                record.control_port, record.control_token = control.port, control.token
                self._write_roles()
                targets = run.path / TARGETS_FILE
                await tasks.start(self._keep_targets, resolved, targets)
                observer.metrics_targets(targets)
                observer.graph_ready(url, time.perf_counter() - began)
                await stop.wait()
            finally:
                with anyio.CancelScope(shield=True):
                    observer.stopping()
                    await self._stop_all(resolved, observer)
                    await self.after_roles()
                    if (run.path / TARGETS_FILE).exists():
                        write_targets(run.path / TARGETS_FILE, [])  # nothing left to scrape
                tasks.cancel_scope.cancel()

    async def _keep_targets(
        self,
        graph: GraphSpec,
        path: Path,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep the run's Prometheus targets current from discovery (launch/targets.py)."""
        async with contextlib.AsyncExitStack() as stack:
            discovery: Discovery
            try:
                discovery = await stack.enter_async_context(make_discovery(graph))
            except DiscoveryError as exc:
                # The roles reached it; this machine may not (roles placed on other nodes):
                # the targets are then the roles this dyn up started, not those that join.
                _log.warning("targets.json lists only the roles dyn up started: %s", exc)
                discovery = MemoryDiscovery()
            await keep_targets(
                discovery, graph.namespace, path, self._own_pages, task_status=task_status
            )

    def _own_pages(self) -> list[ScrapePage]:
        """The pages of the role processes that run, as their ready lines said."""
        pages = []
        for role in self.roles:
            ready = role.ready or {}
            url = ready.get(METRICS_URL_KEY)
            if not url or role.exited.is_set():
                continue
            hosted = [(role.component, role.replica, ready.get("instance_id"))]
            hosted += [(h["component"], h["replica"], h["instance_id"]) for h in ready["hosted"]]
            pages += [ScrapePage(url, c, r, i, role.node) for c, r, i in hosted if i]
        return pages

    async def _start_all(
        self,
        graph: GraphSpec,
        run: state.RunDir,
        graph_path: Path,
        observer: LaunchObserver,
        tasks: anyio.abc.TaskGroup,
        began: float,
    ) -> None:
        # The processes of one component start together; components in order.
        plans = self.process_plans(graph)
        for component in dict.fromkeys(plan.component for plan in plans):
            batch = []
            for plan in (p for p in plans if p.component == component):
                role = _role_process(graph.component(plan.component), plan.replica)
                role.companions = plan.companions
                for name, replica in plan.companions:
                    observer.role_starting(role_name(graph.component(name), replica), role.node)
                observer.role_starting(role.role, role.node)
                await self._spawn(tasks, run, graph_path, role)
                batch.append(role)
            for started in batch:
                await self._wait_ready(started)
                for name, replica in started.companions:
                    hosted = role_name(graph.component(name), replica)
                    observer.role_up(hosted, started.node, time.perf_counter() - began)
                observer.role_up(started.role, started.node, time.perf_counter() - began)

    async def _spawn(
        self,
        tasks: anyio.abc.TaskGroup,
        run: state.RunDir,
        graph_path: Path,
        role: RoleProcess,
    ) -> None:
        argv = self.role_command(run, graph_path, role)
        try:
            process = await anyio.open_process(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches dyn up only; it stops roles in order
                # The launch's settings reach the role's CLI edge through its environment.
                env={**_inherited_env(), "PYTHONUNBUFFERED": "1", **self.settings.role_env()},
            )
        except OSError as exc:  # the program is missing or cannot be run
            who = f"role {role.role}" + (f" on {role.node}" if role.node != "local" else "")
            raise LaunchError(
                f"{who} could not start: cannot run {argv[0]!r}: {exc.strerror or exc}"
            ) from exc
        role.process = process
        role.label = role.label or role.role
        role.log_path = run.log_path(role.role)
        role.log = role.log_path.open("a", encoding="utf-8")
        self.roles.append(role)
        await self.role_spawned(role)
        tasks.start_soon(self._pump, role)

    # -- scaling while running ---------------------------------------------------------

    def _write_roles(self) -> None:
        scaling = self._scaling
        assert scaling is not None
        records: list[state.RoleRecord] = []
        for role in self.roles:
            record = self.role_record(scaling.graph, role)
            hosted = {
                (h["component"], h["replica"]): h for h in (role.ready or {}).get("hosted", [])
            }
            for name, replica in role.companions:
                records.append(
                    msgspec.structs.replace(
                        record,
                        role=role_name(scaling.graph.component(name), replica),
                        component=name,
                        replica=replica,
                        instance_id=hosted.get((name, replica), {}).get("instance_id"),
                    )
                )
            records.append(record)
        scaling.record.roles = records
        state.write_record(scaling.run, scaling.record)

    async def scale(self, component: str, replicas: int) -> list[str]:
        """Start or drain replicas of ``component`` until ``replicas`` run."""
        scaling = self._scaling
        if scaling is None:
            raise LaunchError("the graph is still starting; scale it once it serves")
        try:
            spec = scaling.graph.component(component)
        except KeyError:
            names = ", ".join(c.name for c in scaling.graph.components)
            raise LaunchError(
                f"no component {component!r} in this graph; components: {names}"
            ) from None
        if role_of(spec).port_field is not None:
            raise LaunchError("frontends cannot be scaled: their replicas would share one port")
        if any(name == component for r in self.roles for name, _ in r.companions):
            raise LaunchError(
                f"{component!r} shares processes with other role instances in this layout; "
                "to scale it, run the graph with --layout process-per-role"
            )
        if replicas < 0:
            raise LaunchError(f"replicas must be >= 0, got {replicas}")
        running = [r for r in self.roles if r.component == component and not r.exited.is_set()]
        lines: list[str] = []
        if replicas > len(running):
            used = {r.replica for r in self.roles if r.component == component}
            fresh = [i for i in range(replicas + len(used)) if i not in used]
            batch = []
            for replica in fresh[: replicas - len(running)]:
                role = _role_process(spec, replica)
                scaling.observer.role_starting(role.role, role.node)
                await self._spawn(scaling.tasks, scaling.run, scaling.graph_path, role)
                batch.append(role)
            began = time.perf_counter()
            for role in batch:
                await self._wait_ready(role)
                scaling.observer.role_up(role.role, role.node, time.perf_counter() - began)
                lines.append(f"started {role.role} on {role.node}")
        else:
            # The newest replicas go first: they have the least state (cache) to lose.
            for role in sorted(running, key=lambda r: r.replica)[replicas:][::-1]:
                await self._stop(role)
                self.roles.remove(role)
                scaling.observer.role_stopped(role.role)
                lines.append(f"drained and stopped {role.role} on {role.node}")
        self._write_roles()
        now = len([r for r in self.roles if r.component == component and not r.exited.is_set()])
        lines.append(f"{component}: {now} replica(s) running")
        return lines

    # -- the hooks a subclass implements ------------------------------------------------

    def process_plans(self, graph: GraphSpec) -> list[ProcessPlan]:
        """The processes to start, in order, and the role instances each hosts: by
        default one process per role replica, dependencies first."""
        return [
            ProcessPlan(((spec.name, replica),))
            for spec in graph.topological_order()
            for replica in range(spec.replicas)
        ]

    @abstractmethod
    def role_command(self, run: state.RunDir, graph_path: Path, role: RoleProcess) -> list[str]:
        """The argv that starts ``role`` (``graph_path`` is the run's resolved graph)."""

    async def role_spawned(self, role: RoleProcess) -> None:
        """Called once a role's process exists, before its output is read."""

    async def before_roles(
        self,
        graph: GraphSpec,
        run: state.RunDir,
        record: state.RunRecord,
        tasks: anyio.abc.TaskGroup,
    ) -> None:
        """Runs before the first role starts; ``tasks`` lives as long as the launch."""

    async def after_roles(self) -> None:
        """Runs once every role has stopped (also after a failed start)."""

    def role_record(self, graph: GraphSpec, role: RoleProcess) -> state.RoleRecord:
        """What the run record says of a role that is ready."""
        return state.RoleRecord(
            role=role.role,
            component=role.component,
            replica=role.replica,
            node=role.node,
            pid=role.process.pid,
            address=(role.ready or {}).get("address"),
            instance_id=(role.ready or {}).get("instance_id"),
            metrics_url=(role.ready or {}).get("metrics_url"),
        )

    async def terminate(self, role: RoleProcess, sig: signal.Signals) -> None:
        """Send ``sig`` to the role and everything it started (its process group)."""
        _signal(role.process, sig)

    async def cleanup(self, role: RoleProcess) -> None:
        """After a role is gone: remove what it could not remove itself."""

    # -- watching the processes -----------------------------------------------------------

    async def _pump(self, role: RoleProcess) -> None:
        """Copy the role's output to its log file and to our stderr with its prefix."""
        assert role.process.stdout is not None
        buffered = b""
        try:
            async for chunk in role.process.stdout:
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                for raw in lines:
                    self.log_line(role, raw.decode(errors="replace"))
            if buffered:
                self.log_line(role, buffered.decode(errors="replace"))
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(KILL_WAIT_S + STOP_GRACE_S):
                await role.process.wait()
            code = role.process.returncode
            if not (self._stopping or role.stopping) and role.ready is not None:
                role.died = True
                self.log_line(role, f"exited unexpectedly with code {code}")
            role.log.close()
            role.exited.set()
            role.ready_event.set()

    def log_line(self, role: RoleProcess, line: str) -> None:
        """Record a line of the role's output (or a line about it) in its log and ours."""
        if line.startswith(READY_MARK):
            role.ready = json.loads(line[len(READY_MARK) :])
            role.ready_event.set()
            return
        if line.startswith(FAILED_MARK):
            self._record_failure(role, line[len(FAILED_MARK) :])
            return
        role.tail.append(line)
        if not role.log.closed:  # the launcher may speak of a role that has just exited
            role.log.write(line + "\n")
            role.log.flush()
        sys.stderr.write(f"{role.label:<14} | {line}\n")

    def _record_failure(self, role: RoleProcess, payload: str) -> None:
        """The role's failure line: its reason for our error, its traceback for its log
        only (our stderr gets the one line at the end)."""
        try:
            record = json.loads(payload)
            role.failure, detail = str(record["reason"]), str(record.get("detail", ""))
        except (ValueError, KeyError, TypeError):
            role.failure, detail = payload, ""
        if not role.log.closed:
            role.log.write(detail or role.failure + "\n")
            role.log.flush()

    async def _wait_ready(self, role: RoleProcess) -> None:
        with anyio.move_on_after(READY_TIMEOUT_S + 5):
            await role.ready_event.wait()
        if role.ready is not None:
            return
        raise LaunchError(start_failure(role, READY_TIMEOUT_S + 5))

    async def _stop_all(self, graph: GraphSpec, observer: LaunchObserver) -> None:
        self._stopping = True
        frontends = {spec.name for spec in http_components(graph)}
        first = [r for r in self.roles if r.component in frontends]
        rest = [r for r in reversed(self.roles) if r.component not in frontends]
        for group in (first, rest):
            for role in group:
                await self._stop(role)
                observer.role_stopped(role.role)
                for name, replica in reversed(role.companions):
                    observer.role_stopped(role_name(graph.component(name), replica))

    async def _stop(self, role: RoleProcess) -> None:
        role.stopping = True
        if role.process.returncode is None:
            hurry = self._hurry or anyio.Event()
            if not hurry.is_set():
                await self.terminate(role, signal.SIGTERM)
                with anyio.move_on_after(STOP_GRACE_S):
                    async with anyio.create_task_group() as either:
                        either.start_soon(cancel_when_set, role.exited, either.cancel_scope)
                        either.start_soon(cancel_when_set, hurry, either.cancel_scope)
            if role.process.returncode is None:
                await self.terminate(role, signal.SIGKILL)
        with anyio.move_on_after(KILL_WAIT_S):
            await role.exited.wait()
        await self.cleanup(role)

    def hurry(self) -> None:
        """Stop waiting for drains: roles still running are killed at once."""
        if self._hurry is not None:
            self._hurry.set()


def start_failure(role: RoleProcess, waited_s: float) -> str:
    """One line on why ``role`` did not come up: its own reason when it gave one, else
    how it ended and its last log line; and where its log is."""
    who = f"role {role.role}" + (f" on {role.node}" if role.node != "local" else "")
    where = f" (log: {role.log_path})" if role.log_path else ""
    if role.failure is not None:
        return f"{who} could not start: {role.failure}{where}"
    last = next((line.strip() for line in reversed(role.tail) if line.strip()), "")
    said = f": {last}" if last else " (no output)"
    if role.exited.is_set():
        code = role.process.returncode
        return f"{who} exited with code {code} during start-up{said}{where}"
    return f"{who} did not become ready within {waited_s:.0f} s{said}{where}"


def _role_process(spec: ComponentSpec, replica: int) -> RoleProcess:
    return RoleProcess(role_name(spec, replica), spec.name, replica, node_of(spec, replica))


def _signal(process: Process, sig: signal.Signals) -> None:
    # The role is its own session and process group: reach anything it started too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
