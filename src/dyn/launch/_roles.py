"""Starting and stopping one role instance inside a runtime: shared by every launcher."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

import anyio

from dyn import plugins, state
from dyn.discovery.base import Discovery
from dyn.errors import LaunchError
from dyn.graph import ComponentSpec, GraphSpec
from dyn.launch.role_classes import role_class
from dyn.runtime.client import Client
from dyn.runtime.component import Component
from dyn.runtime.runtime import Runtime, component_info
from dyn.settings import Settings, TransportSecurity
from dyn.transports.base import Transport

__all__ = [
    "DRAIN_TIMEOUT_S",
    "READY_TIMEOUT_S",
    "make_discovery",
    "make_transport",
    "role_name",
    "start_role",
    "stop_role",
]

# How long a role may take to come up (its dependencies included) before the launch fails.
READY_TIMEOUT_S = 30.0
# How long a stopping role waits for its work in flight before it stops anyway (a
# cluster's grace period after SIGTERM must cover it: dyn export k8s reads it here).
DRAIN_TIMEOUT_S = 30.0


def make_transport(graph: GraphSpec, security: TransportSecurity | None = None) -> Transport:
    """The graph's transport, given the launch's security settings (those that are set)
    as options, so it need not look them up in the environment itself."""
    cls = plugins.load("dyn.transports", graph.transport)
    options = {**graph.transport_options, **(security.options() if security else {})}
    transport: Transport = cls(**options)
    return transport


def make_discovery(graph: GraphSpec) -> Discovery:
    cls = plugins.load("dyn.discovery", graph.discovery.backend)
    discovery: Discovery = cls(ttl_s=graph.discovery.ttl_s, **dict(graph.discovery.options))
    return discovery


def discovery_in_run(graph: GraphSpec, run: state.RunDir) -> GraphSpec:
    """File discovery without a directory of its own gets the run's folder."""
    discovery = graph.discovery
    if discovery.backend != "file" or "path" in discovery.options:
        return graph
    options = MappingProxyType({**dict(discovery.options), "path": str(run.discovery_dir)})
    return dataclasses.replace(graph, discovery=dataclasses.replace(discovery, options=options))


def role_name(spec: ComponentSpec, replica: int) -> str:
    """``component`` for a single replica, ``component[i]`` when there are several
    (or once `dyn scale` added one)."""
    return spec.name if spec.replicas == 1 and replica == 0 else f"{spec.name}[{replica}]"


def node_of(spec: ComponentSpec, replica: int) -> str:
    return spec.placement[replica % len(spec.placement)] if spec.placement else "local"


async def start_role(
    runtime: Runtime,
    graph: GraphSpec,
    spec: ComponentSpec,
    replica: int,
    node: str | None = None,
    settings: Settings | None = None,
) -> Component[Any]:
    """Build the component, wire its clients, start it, wait until it is ready and its
    dependencies have instances, then register its endpoints."""
    cls = role_class(spec.uses)
    clients = {
        dep.slot: runtime.client(dep.component, dep.strategy or _default_strategy(cls, dep.slot))
        for dep in spec.depends_on
    }
    info = component_info(graph.namespace, spec.name, replica, node or node_of(spec, replica))
    component = cls(spec.config, info, clients)
    component.runtime = runtime
    component.model = graph.model
    if settings is not None:
        component.run_settings = settings
    with anyio.move_on_after(READY_TIMEOUT_S) as started:
        await component.start()
    if started.cancelled_caught:
        raise LaunchError(
            f"role {role_name(spec, replica)!r}: start() did not return within "
            f"{READY_TIMEOUT_S:.0f} s"
        )
    runtime.tasks.start_soon(component.run)
    await _wait_ready(role_name(spec, replica), component, clients)
    await runtime.serve_component(component, metadata=component.metadata())
    return component


async def stop_role(runtime: Runtime, component: Component[Any]) -> None:
    """Deregister first, then drain the work in flight, then release resources."""
    await runtime.withdraw_component(component)
    with anyio.move_on_after(DRAIN_TIMEOUT_S):
        await component.drain()
    await component.stop()


async def _wait_ready(role: str, component: Component[Any], clients: dict[str, Client]) -> None:
    with anyio.move_on_after(READY_TIMEOUT_S):
        for client in clients.values():
            await client.wait_for_instances(endpoint=None)
        # readiness is a plain predicate: poll it
        while not component.ready():  # noqa: ASYNC110
            await anyio.sleep(0.01)
        return
    waiting = [c.component for c in clients.values() if not c.instances_any()]
    detail = f"; still waiting for {', '.join(waiting)}" if waiting else ""
    raise LaunchError(f"role {role!r} did not become ready within {READY_TIMEOUT_S:.0f} s{detail}")


def _default_strategy(role_class: type[Component[Any]], slot: str) -> str:
    dependency = role_class.dependency_slots().get(slot)
    return (dependency.strategy if dependency else None) or "round_robin"
