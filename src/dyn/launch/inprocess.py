"""The in-process launcher: every role of the graph in this one process and event loop."""

from __future__ import annotations

import time
from typing import Any

import anyio

from dyn import plugins
from dyn.discovery.base import Discovery
from dyn.errors import LaunchError
from dyn.graph import ComponentSpec, GraphSpec
from dyn.launch.base import Launcher, LaunchObserver
from dyn.runtime.client import Client
from dyn.runtime.component import Component
from dyn.runtime.runtime import Runtime, component_info
from dyn.transports.base import Transport

__all__ = ["InProcessLauncher", "make_discovery", "make_transport"]

# How long a role may take to come up before `dyn up` gives up on it.
READY_TIMEOUT_S = 30.0


def make_transport(graph: GraphSpec) -> Transport:
    cls = plugins.load("dyn.transports", graph.transport)
    transport: Transport = cls()
    return transport


def make_discovery(graph: GraphSpec, **overrides: Any) -> Discovery:
    cls = plugins.load("dyn.discovery", graph.discovery.backend)
    options = {**dict(graph.discovery.options), **overrides}
    discovery: Discovery = cls(ttl_s=graph.discovery.ttl_s, **options)
    return discovery


class InProcessLauncher(Launcher):
    """One process, one runtime, one registry: the embedded default for a single node."""

    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        self.components: list[tuple[ComponentSpec, Component[Any]]] = []

    async def run(self, graph: GraphSpec, observer: LaunchObserver, stop: anyio.Event) -> None:
        began = time.perf_counter()
        async with (
            make_discovery(graph) as discovery,
            Runtime(
                namespace=graph.namespace, transport=make_transport(graph), discovery=discovery
            ) as runtime,
        ):
            self.runtime = runtime
            try:
                await self._start_all(graph, runtime, observer)
                url = next(
                    (getattr(c, "url", None) for s, c in self.components if s in graph.frontends()),
                    None,
                )
                observer.graph_ready(url, time.perf_counter() - began)
                await stop.wait()
            finally:
                with anyio.CancelScope(shield=True):
                    observer.stopping()
                    await self._stop_all(observer)

    async def _start_all(
        self, graph: GraphSpec, runtime: Runtime, observer: LaunchObserver
    ) -> None:
        for spec in graph.topological_order():
            role_class = spec.role_class()
            for replica in range(spec.replicas):
                role = spec.name if spec.replicas == 1 else f"{spec.name}[{replica}]"
                node = spec.placement[replica % len(spec.placement)] if spec.placement else "local"
                observer.role_starting(role, node)
                t0 = time.perf_counter()
                clients = {
                    dep.slot: runtime.client(
                        dep.component, dep.strategy or _default_strategy(role_class, dep.slot)
                    )
                    for dep in spec.depends_on
                }
                info = component_info(graph.namespace, spec.name, replica, node)
                component = role_class(spec.config, info, clients)
                component.runtime = runtime
                await component.start()
                runtime.tasks.start_soon(component.run)
                await self._wait_ready(role, component, clients)
                await runtime.serve_component(component)
                self.components.append((spec, component))
                observer.role_up(role, node, time.perf_counter() - t0)

    async def _wait_ready(
        self, role: str, component: Component[Any], clients: dict[str, Client]
    ) -> None:
        with anyio.move_on_after(READY_TIMEOUT_S):
            for client in clients.values():
                await client.wait_for_instances(endpoint=None)
            # readiness is a plain predicate: poll it
            while not component.ready():  # noqa: ASYNC110
                await anyio.sleep(0.01)
            return
        raise LaunchError(f"role {role!r} did not become ready within {READY_TIMEOUT_S:.0f} s")

    async def _stop_all(self, observer: LaunchObserver) -> None:
        runtime = self.runtime
        assert runtime is not None
        # Frontends first (stop taking traffic), then the rest, dependents before
        # their dependencies, so nothing in flight loses its downstream.
        for _spec, component in reversed(self.components):
            await runtime.withdraw_component(component)
            with anyio.move_on_after(30):
                await component.drain()
            await component.stop()
            observer.role_stopped(_role_name(_spec, component))
        self.components.clear()


def _role_name(spec: ComponentSpec, component: Component[Any]) -> str:
    return spec.name if spec.replicas == 1 else f"{spec.name}[{component.info.replica}]"


def _default_strategy(role_class: type[Component[Any]], slot: str) -> str:
    dependency = role_class.dependency_slots().get(slot)
    return (dependency.strategy if dependency else None) or "round_robin"
