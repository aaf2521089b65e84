"""Loading valid graphs: the example file, defaults, the accepted forms, overrides."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dyn.graph import (
    DependencySpec,
    DiscoverySpec,
    GraphSpec,
    NodeSpec,
    RoleInstance,
    dump_graph_yaml,
    load_graph,
    load_graph_text,
)
from dyn.launch.role_classes import http_components, role_class, role_of
from dyn.roles.frontend import Frontend
from dyn.roles.frontend_config import FrontendConfig
from dyn.roles.hello import Backend, BackendConfig, Middle

HELLO = Path(__file__).resolve().parents[2] / "graphs" / "hello_world.yaml"


def load(text: str, *overrides: str) -> GraphSpec:
    return load_graph_text(textwrap.dedent(text), "g.yaml", overrides, resolve_role=role_class)


def test_hello_world_loads() -> None:
    graph = load_graph(HELLO, resolve_role=role_class)
    assert (graph.name, graph.namespace, graph.transport) == ("hello_world", "hello", "inproc")
    assert graph.discovery == DiscoverySpec(backend="memory", ttl_s=10.0)
    assert graph.nodes == (NodeSpec(name="local", host="127.0.0.1"),)
    assert [c.name for c in graph.components] == ["frontend", "middle", "backend"]
    frontend = graph.component("frontend")
    assert role_of(frontend) is Frontend
    assert frontend.depends_on == (DependencySpec("middle", "middle"),)
    assert isinstance(frontend.config, FrontendConfig)
    assert frontend.config.routes == {"/generate": "middle/generate"}
    assert frontend.config.prefix == "Frontend: "
    assert role_of(graph.component("middle")) is Middle
    assert graph.component("backend").config == BackendConfig()
    assert http_components(graph) == [frontend]
    assert graph.source == str(HELLO)


def test_hello_world_order_and_instances() -> None:
    graph = load_graph(str(HELLO), resolve_role=role_class)
    assert [c.name for c in graph.topological_order()] == ["backend", "middle", "frontend"]
    assert graph.instances() == [
        RoleInstance("frontend", 0, "local"),
        RoleInstance("middle", 0, "local"),
        RoleInstance("backend", 0, "local"),
    ]


def test_specs_are_frozen() -> None:
    graph = load_graph(HELLO, resolve_role=role_class)
    with pytest.raises(dataclasses.FrozenInstanceError):
        graph.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        graph.discovery.options["x"] = 1  # type: ignore[index]


def test_lookups_raise_key_error() -> None:
    graph = load_graph(HELLO, resolve_role=role_class)
    with pytest.raises(KeyError):
        graph.component("nope")
    with pytest.raises(KeyError):
        graph.node("nope")


def test_nodes_placement_and_round_robin_instances() -> None:
    graph = load(
        """\
        name: spread
        description: two machines
        nodes:
          a: {host: 10.0.0.1, user: me, port: 2222, ssh_options: [-oBatchMode=yes]}
          b: {host: 10.0.0.2, python: /opt/py/bin/python, workdir: /srv, bind: 0.0.0.0}
        components:
          back:
            uses: dyn.roles.hello:Backend
            replicas: 3
            placement: [b, a]
          solo:
            uses: dyn.roles.hello:Backend
        """
    )
    assert graph.namespace == "spread"
    assert graph.description == "two machines"
    assert graph.node("a") == NodeSpec("a", "10.0.0.1", "me", 2222, ("-oBatchMode=yes",))
    assert graph.node("b") == NodeSpec(
        "b", "10.0.0.2", None, 22, (), "/opt/py/bin/python", "/srv", "0.0.0.0"
    )
    assert graph.component("solo").placement == ("a",)  # the first node by default
    assert [i.node for i in graph.instances()] == ["b", "a", "b", "a"]
    assert [i.replica for i in graph.instances()] == [0, 1, 2, 0]


def test_placement_may_be_a_single_name() -> None:
    graph = load(
        """\
        name: g
        nodes: {a: {host: x}, b: {host: y}}
        components:
          back: {uses: dyn.roles.hello:Backend, placement: b}
        """
    )
    assert graph.component("back").placement == ("b",)


def test_dependency_forms_and_strategy_alias() -> None:
    graph = load(
        """\
        name: g
        discovery: {backend: memory, ttl_s: 2.5, options: {prefix: /dyn}}
        components:
          front:
            uses: frontend
            depends_on: {api: mid, raw: {component: back, strategy: round-robin}}
            config: {routes: {/a: api/generate, /b: back/generate}}
          mid:
            uses: dyn.roles.hello:Middle
            depends_on: {backend: {component: back, strategy: random}}
          back:
            uses: dyn.roles.hello:Backend
        """
    )
    assert graph.discovery.ttl_s == 2.5
    assert dict(graph.discovery.options) == {"prefix": "/dyn"}
    assert graph.component("front").depends_on == (
        DependencySpec("api", "mid"),
        DependencySpec("raw", "back", "round_robin"),
    )
    assert graph.component("mid").dependency("backend") == DependencySpec(
        "backend", "back", "random"
    )
    assert [c.name for c in graph.topological_order()] == ["back", "mid", "front"]


def test_frontend_alias_counts_as_frontend() -> None:
    graph = load(
        "name: g\ncomponents:\n  f: {uses: frontend}\n  b: {uses: dyn.roles.hello:Backend}\n"
    )
    assert [c.name for c in http_components(graph)] == ["f"]


def test_empty_config_and_depends_on_may_be_null() -> None:
    graph = load(
        "name: g\ncomponents:\n  b:\n    uses: dyn.roles.hello:Backend\n    config:\n    depends_on:\n"
    )
    assert graph.component("b").config == BackendConfig()
    assert graph.component("b").depends_on == ()


def test_override_replicas_and_config_keys() -> None:
    graph = load_graph(
        HELLO,
        [
            "middle.replicas=3",
            "backend.delay_s=0.25",
            "middle.config.suffix=-m",
            "frontend.port=9000",
            "frontend.routes./v1=middle/generate",
        ],
        resolve_role=role_class,
    )
    assert graph.component("middle").replicas == 3
    backend_config = graph.component("backend").config
    assert isinstance(backend_config, BackendConfig)
    assert backend_config.delay_s == 0.25
    assert graph.component("middle").config.suffix == "-m"  # type: ignore[attr-defined]
    front = graph.component("frontend").config
    assert isinstance(front, FrontendConfig)
    assert front.port == 9000
    assert front.routes == {"/generate": "middle/generate", "/v1": "middle/generate"}
    assert len(graph.instances()) == 5


def test_override_component_fields() -> None:
    graph = load_graph(
        HELLO,
        ["middle.uses=dyn.roles.hello:Backend", "middle.depends_on=[]"],
        resolve_role=role_class,
    )
    assert role_of(graph.component("middle")) is Backend
    assert graph.component("middle").depends_on == ()


def test_dump_yaml_loads_back(tmp_path: Path) -> None:
    graph = load_graph(HELLO, resolve_role=role_class)
    path = tmp_path / "copy.yaml"
    path.write_text(dump_graph_yaml(graph))
    again = load_graph(path, resolve_role=role_class)
    assert again == graph
    assert again.source == str(path)


STUB_LOAD = """
import sys
from typing import Any

import msgspec

from dyn.graph import load_graph_text


class Config(msgspec.Struct):
    greeting: str = "hi"


class Stub:
    config_type = Config
    open_dependencies = True
    serves_http = False
    admin_routes = False
    port_field = None
    example_request = None

    @classmethod
    def endpoints(cls) -> dict[str, str]:
        return {"generate": "generate"}

    @classmethod
    def dependency_slots(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def endpoint_types(cls) -> dict[str, tuple[Any, Any]]:
        return {"generate": (None, None)}

    @classmethod
    def route_targets(cls, config: Any) -> dict[str, str]:
        return {}

    @classmethod
    def admin_token_required(cls, config: Any) -> bool:
        return False

    @classmethod
    def check_wiring(cls, config: Any, wiring: Any) -> list[Any]:
        return []

    @classmethod
    def config_summary(cls, config: Any) -> list[str]:
        return []


asked = []


def resolve(uses: str) -> Any:
    asked.append(uses)
    return Stub


graph = load_graph_text(
    "name: g\\ncomponents:\\n  a: {uses: worker, config: {greeting: yo}}\\n"
    "  b: {uses: frontend, depends_on: [a]}\\n",
    resolve_role=resolve,
)
assert graph.component("a").config == Config("yo"), graph
assert sorted(asked) == ["frontend", "worker"], asked
loaded = [m for m in sys.modules if m.startswith(("dyn.runtime", "dyn.roles", "dyn.launch"))]
print(",".join(loaded))
"""


def test_loading_a_graph_asks_the_caller_for_roles_and_imports_none() -> None:
    # The graph is data: `uses:` goes to the caller's resolver, never to dyn's roles.
    out = subprocess.run(
        [sys.executable, "-c", STUB_LOAD], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
