"""Process layouts: which role instances share a process when `dyn up` runs a graph here.

A graph's ``layout:`` (or ``dyn up --layout``) is one of:

- ``one-process``: every role in the `dyn up` process, calling each other in-process.
- ``process-per-role``: one process per role replica, the graph's transport between
  them (tcp when the graph says inproc, which cannot cross processes).
- ``auto`` (the default): a fixed rule of the machine's core count C, the CPUs this
  process may run on. A graph whose transport is ``inproc``, or a machine with one core,
  runs in one process. Otherwise the *front* runs as F = min(max(1, C // 2),
  MAX_FRONT_PROCESSES) processes that share the HTTP port, each hosting one replica of
  every front component (the HTTP component and those of its dependencies that scale
  with cores, such as the processor, whose replicas keep their routers in step); every
  other component spreads its replicas over min(replicas, C) processes, replica r in
  process r mod that. Calls inside a process skip the transport. ``dyn up
  --front-processes N`` pins F.

Graphs that place roles on nodes run one process per role replica on its node,
whatever the layout. docs/process-layout.md explains the choice and its figures.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dyn.graph import ComponentSpec, GraphSpec
from dyn.launch.role_classes import role_of
from dyn.runtime.component import Component

__all__ = [
    "MAX_FRONT_PROCESSES",
    "Layout",
    "ProcessPlan",
    "apply_layout",
    "core_count",
    "engine_processes_for",
    "front_processes_for",
    "plan_layout",
    "process_plans",
]

# Past a few front processes, each router replica's share of the synced state (every
# other replica's in-flight load, every worker's KV events) costs more than it serves.
MAX_FRONT_PROCESSES = 8


def front_processes_for(cores: int) -> int:
    """Half the cores for the front (HTTP, tokenizing, routing, streaming: about half of
    a request's CPU with simulated engines), the rest for the engines."""
    return min(max(1, cores // 2), MAX_FRONT_PROCESSES)


def engine_processes_for(replicas: int, cores: int) -> int:
    """The processes a non-front component's replicas share: one engine's steps run one
    at a time in its loop, and more processes than cores add only switches and copies."""
    return max(1, min(replicas, cores))


# Between processes, a graph that says inproc gets this transport.
PROCESS_TRANSPORT = "tcp"


@dataclass(frozen=True)
class ProcessPlan:
    """One process and the role instances it hosts, in start order (dependencies
    first); the last is the one it is named after."""

    roles: tuple[tuple[str, int], ...]

    @property
    def component(self) -> str:
        return self.roles[-1][0]

    @property
    def replica(self) -> int:
        return self.roles[-1][1]

    @property
    def companions(self) -> tuple[tuple[str, int], ...]:
        return self.roles[:-1]


@dataclass(frozen=True)
class Layout:
    """What a graph's layout means on this machine."""

    requested: str  # as the graph or the command line asked
    mode: str  # one-process | process-per-role | front
    cores: int
    front: tuple[str, ...] = ()  # components hosted together, one replica per process
    front_processes: int = 0
    reason: str = ""  # why auto chose one process

    def describe(self, graph: GraphSpec | None = None) -> str:
        """One line for `dyn graph show`, `dyn up` and `dyn status`."""
        rule = f"{self.requested} on {self.cores} core{'s' if self.cores != 1 else ''}: "
        if self.requested != "auto":
            rule = ""
        if self.mode == "one-process":
            return f"{rule}every role in one process" + (f" ({self.reason})" if self.reason else "")
        if self.mode == "process-per-role" or graph is None:
            return f"{rule}one process per role replica"
        front = " + ".join(self.front)
        shared = " sharing the HTTP port" if self.front_processes > 1 else ""
        parts = [f"{_count(self.front_processes, 'front process', 'es')} ({front}){shared}"]
        for spec in graph.components:
            if spec.name not in self.front:
                groups = engine_processes_for(spec.replicas, self.cores)
                parts.append(f"{spec.name} ×{spec.replicas} in {_count(groups, 'process', 'es')}")
        return f"{rule}{', '.join(parts)}; {graph.transport} between processes"


def _count(n: int, noun: str, plural: str) -> str:
    return f"{n} {noun}{plural if n != 1 else ''}"


def core_count() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def plan_layout(
    graph: GraphSpec,
    cores: int,
    role: Callable[[ComponentSpec], type[Component[Any]]] = role_of,
    requested: str | None = None,
    front_processes: int | None = None,
) -> Layout:
    """The layout ``graph`` gets on a machine with ``cores`` CPUs (see the module);
    ``front_processes`` pins F."""
    asked = requested or graph.layout
    if asked == "one-process":
        return Layout(asked, "one-process", cores)
    if asked == "auto" and graph.transport == "inproc":
        return Layout(asked, "one-process", cores, reason="the graph's transport is inproc")
    if asked == "auto" and cores < 2:
        return Layout(asked, "one-process", cores, reason="one core")
    front = _front(graph, role) if asked == "auto" and not graph.has_nodes() else ()
    if not front:
        return Layout(asked, "process-per-role", cores)
    fronts = front_processes if front_processes is not None else front_processes_for(cores)
    return Layout(asked, "front", cores, front, fronts)


def _front(
    graph: GraphSpec, role: Callable[[ComponentSpec], type[Component[Any]]]
) -> tuple[str, ...]:
    """The HTTP component and those of its direct dependencies that scale with cores and
    that nothing outside the front calls; () when the HTTP component cannot scale."""
    http = [c for c in graph.components if role(c).serves_http]
    if len(http) != 1 or not _scales(role(http[0]), http[0]):
        return ()
    (head,) = http
    members = {head.name}
    for dep in head.depends_on:
        spec = graph.component(dep.component)
        if _scales(role(spec), spec):
            members.add(spec.name)
    callers_outside = {
        dep.component
        for spec in graph.components
        if spec.name not in members
        for dep in spec.depends_on
    }
    members -= callers_outside - {head.name}
    # Start order: dependencies first, as the graph orders them.
    return tuple(c.name for c in graph.topological_order() if c.name in members)


def _scales(cls: type[Component[Any]], spec: ComponentSpec) -> bool:
    return cls.scales_with_cores and cls.replicas_in_step(spec.config)


def apply_layout(
    graph: GraphSpec,
    layout: Layout,
    role: Callable[[ComponentSpec], type[Component[Any]]] = role_of,
) -> GraphSpec:
    """The graph as the layout runs it: front components with one replica per front
    process (each told so by its role's ``replicated_config``), and a transport that
    crosses processes when the graph's cannot."""
    if layout.mode == "one-process":
        return dataclasses.replace(graph, transport="inproc")
    transport = PROCESS_TRANSPORT if graph.transport == "inproc" else graph.transport
    components = tuple(
        dataclasses.replace(
            spec,
            replicas=layout.front_processes,
            config=role(spec).replicated_config(spec.config)
            if layout.front_processes > 1
            else spec.config,
        )
        if spec.name in layout.front
        else spec
        for spec in graph.components
    )
    return dataclasses.replace(graph, transport=transport, components=components)


def process_plans(graph: GraphSpec, layout: Layout) -> list[ProcessPlan]:
    """Every process to start, in start order: a component's processes after those of
    its dependencies; the front processes once the last front component's turn comes."""
    plans: list[ProcessPlan] = []
    last_front = max(
        (i for i, c in enumerate(graph.topological_order()) if c.name in layout.front),
        default=-1,
    )
    for index, spec in enumerate(graph.topological_order()):
        if spec.name not in layout.front:
            groups = engine_processes_for(spec.replicas, layout.cores)
            plans.extend(
                ProcessPlan(tuple((spec.name, r) for r in range(g, spec.replicas, groups)))
                for g in range(groups)
            )
        elif index == last_front:
            plans.extend(
                ProcessPlan(tuple((name, r) for name in layout.front))
                for r in range(layout.front_processes)
            )
    return plans
