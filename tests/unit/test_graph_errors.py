"""Every way a graph can be wrong is reported as ``FILE:LINE: FIELD.PATH: message``."""

from __future__ import annotations

import textwrap
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dyn.errors import SpecError
from dyn.graph import load_graph, load_graph_text
from dyn.launch.role_classes import role_class
from dyn.runtime.component import Component, endpoint

HELLO = Path(__file__).resolve().parents[2] / "graphs" / "hello_world.yaml"


class RouterConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    strategy: str = "round_robin"


class Router(Component[RouterConfig]):
    """A role whose config names a routing strategy."""

    @endpoint
    async def generate(self, request: Any, ctx: Any) -> AsyncIterator[str]:
        yield "x"


ROUTER = f"{__name__}:Router"


def problems(text: str, *overrides: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_graph_text(textwrap.dedent(text), "g.yaml", overrides, resolve_role=role_class)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def only(text: str, *overrides: str) -> str:
    found = problems(text, *overrides)
    assert len(found) == 1, found
    return found[0]


def _spec_problems(text: str, source: str, overrides: Sequence[str] = ()) -> list[str] | None:
    """The problems if loading fails with a SpecError, None if the text is a valid graph."""
    try:
        load_graph_text(text, source, overrides, resolve_role=role_class)
    except SpecError as exc:
        return exc.problems
    return None


GOOD = """\
name: g
components:
  front:
    uses: frontend
    depends_on: [mid]
    config:
      routes: {/gen: mid/generate}
  mid:
    uses: dyn.roles.hello:Middle
    depends_on: {backend: back}
  back:
    uses: dyn.roles.hello:Backend
"""


def test_good_graph_used_below_is_valid() -> None:
    assert load_graph_text(GOOD, resolve_role=role_class).name == "g"


def test_yaml_syntax_error_has_the_line() -> None:
    line = only("name: g\ncomponents:\n  a: [1, 2\n  b: {uses: x}\n")
    assert line.startswith("g.yaml:4: invalid YAML: ")


def test_top_level_must_be_a_mapping() -> None:
    assert only("- a\n- b\n") == (
        "g.yaml:1: the top level must be a mapping with 'name' and 'components' (got a list)"
    )


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_file(text: str) -> None:
    assert only(text).startswith("g.yaml:1: the file is empty")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_graph(path, resolve_role=role_class)
    assert info.value.problems == [f"{path}: no such file"]


def test_missing_required_fields() -> None:
    assert problems("description: x\n") == [
        "g.yaml:1: name: missing; every graph needs a name",
        "g.yaml:1: components: missing; a graph needs at least one component",
    ]
    assert only("name: g\ncomponents:\n  a:\n    replicas: 2\n") == (
        "g.yaml:3: components.a.uses: missing; name a role (e.g. uses: frontend) "
        "or 'package.module:Class'"
    )


def test_unknown_top_level_key_suggests() -> None:
    line = only(GOOD.replace("name: g\n", "name: g\nnamspace: x\n"))
    assert line.startswith("g.yaml:2: namspace: unknown key 'namspace' (did you mean 'namespace'?)")
    assert (
        "valid keys: name, namespace, description, transport, layout, discovery, nodes, model, components"
        in line
    )


def test_unknown_node_key() -> None:
    line = only(
        "name: g\nnodes:\n  n1:\n    host: a\n    usr: me\ncomponents:\n  b: {uses: dyn.roles.hello:Backend}\n"
    )
    assert line.startswith("g.yaml:5: nodes.n1.usr: unknown key 'usr' (did you mean 'user'?)")
    assert "valid keys: host, user, port, ssh_options, python, workdir, bind" in line


def test_unknown_component_key() -> None:
    line = only(
        GOOD.replace(
            "    depends_on: {backend: back}\n", "    depends_on: {backend: back}\n    replica: 2\n"
        )
    )
    assert line.startswith(
        "g.yaml:11: components.mid.replica: unknown key 'replica' (did you mean 'replicas'?)"
    )
    assert "valid keys: uses, replicas, placement, depends_on, config" in line


def test_unknown_dependency_key() -> None:
    text = GOOD.replace(
        "depends_on: {backend: back}", "depends_on: {backend: {component: back, stratgy: random}}"
    )
    line = only(text)
    assert line.startswith(
        "g.yaml:10: components.mid.depends_on.backend.stratgy: unknown key 'stratgy' "
        "(did you mean 'strategy'?)"
    )
    assert "valid keys: component, strategy" in line


def test_wrong_type_names_the_expected_type() -> None:
    line = only(
        GOOD.replace(
            "    depends_on: {backend: back}\n",
            "    depends_on: {backend: back}\n    replicas: two\n",
        )
    )
    assert (
        line == "g.yaml:11: components.mid.replicas: must be an integer >= 1 (got a string 'two')"
    )


def test_replicas_below_one() -> None:
    line = only(GOOD + "    replicas: 0\n")
    assert line == "g.yaml:13: components.back.replicas: must be an integer >= 1 (got an integer 0)"


def test_unknown_config_field_suggests_and_lists_fields() -> None:
    line = only(GOOD.replace("      routes:", "      prot: 80\n      routes:"))
    assert line.startswith(
        "g.yaml:7: components.front.config.prot: unknown field 'prot' (did you mean 'port'?)"
    )
    assert line.endswith(
        "valid fields: host, port, reuse_port, routes, openai, prefix, max_body_bytes, max_inflight, "
        "max_queued, queue_timeout_s, request_timeout_s, api_key, admin_token"
    )


def test_bad_config_value_points_at_its_line() -> None:
    text = GOOD + "    config:\n      suffix: -b\n      delay_s: soon\n"
    assert only(text) == (
        "g.yaml:15: components.back.config.delay_s: must be a number (got a string 'soon')"
    )


def test_every_config_problem_is_listed() -> None:
    text = GOOD + "    config:\n      sufix: -b\n      delay_s: soon\n      prefix: [1]\n"
    found = problems(text)
    assert [p.split(": ")[0] for p in found] == ["g.yaml:14", "g.yaml:15", "g.yaml:16"]


def test_bad_value_inside_a_config_mapping() -> None:
    text = GOOD.replace(
        "routes: {/gen: mid/generate}", "routes:\n        /gen: mid/generate\n        /x: 3"
    )
    assert only(text) == (
        "g.yaml:9: components.front.config.routes['/x']: must be a string (got an integer 3)"
    )


def test_frontend_port_out_of_range_gives_the_range() -> None:
    line = only(GOOD.replace("      routes:", "      port: 70000\n      routes:"))
    assert line == (
        "g.yaml:7: components.front.config.port: must be an integer from 1 to 65535 "
        "(got an integer 70000)"
    )


def test_node_port_out_of_range() -> None:
    text = "name: g\nnodes:\n  n1: {host: a, port: 0}\ncomponents:\n  b: {uses: dyn.roles.hello:Backend}\n"
    assert (
        only(text)
        == "g.yaml:3: nodes.n1.port: must be an integer from 1 to 65535 (got an integer 0)"
    )


def test_duplicate_component() -> None:
    line = only(GOOD + "  back:\n    uses: dyn.roles.hello:Backend\n")
    assert line.startswith(
        "g.yaml:13: components.back: duplicate key 'back' (first written on line 11)"
    )


def test_duplicate_node() -> None:
    text = "name: g\nnodes:\n  a: {host: x}\n  a: {host: y}\ncomponents:\n  b: {uses: dyn.roles.hello:Backend}\n"
    assert only(text).startswith("g.yaml:4: nodes.a: duplicate key 'a' (first written on line 3)")


def test_duplicate_key_anywhere() -> None:
    line = only(GOOD + "    config: {suffix: a, suffix: b}\n")
    assert line.startswith("g.yaml:13: components.back.config.suffix: duplicate key 'suffix'")


def test_merge_keys_may_be_overridden() -> None:
    text = GOOD + "    config: &base {suffix: a}\n  back2:\n    uses: dyn.roles.hello:Backend\n"
    text += "    config: {<<: *base, suffix: b}\n"
    assert load_graph_text(text, resolve_role=role_class).component("back2").config.suffix == "b"  # type: ignore[attr-defined]


def test_unknown_component_in_depends_on() -> None:
    assert only(GOOD.replace("depends_on: {backend: back}", "depends_on: {backend: bakc}")) == (
        "g.yaml:10: components.mid.depends_on.backend: unknown component 'bakc' (did you mean 'back'?); "
        "components: front, mid, back"
    )


def test_self_dependency() -> None:
    line = only(GOOD.replace("depends_on: {backend: back}", "depends_on: {backend: mid}"))
    assert (
        line
        == "g.yaml:10: components.mid.depends_on.backend: component 'mid' cannot depend on itself"
    )


def test_dependency_cycle() -> None:
    text = GOOD.replace(
        "uses: dyn.roles.hello:Backend",
        "uses: dyn.roles.hello:Middle\n    depends_on: {backend: mid}",
    )
    assert (
        only(text)
        == "g.yaml:10: components.mid.depends_on.backend: dependency cycle: mid -> back -> mid"
    )


def test_unknown_transport_lists_available() -> None:
    line = only(GOOD.replace("name: g\n", "name: g\ntransport: tcpp\n"))
    assert line.startswith(
        "g.yaml:2: transport: unknown transport 'tcpp' (did you mean 'tcp'?); available: grpc, inproc, nats, tcp"
    )


@pytest.mark.parametrize(
    ("setting", "line"),
    [("discovery: memry\n", 2), ("discovery:\n  backend: memry\n", 3)],
)
def test_unknown_discovery_backend(setting: str, line: int) -> None:
    found = only(GOOD.replace("name: g\n", "name: g\n" + setting))
    field = "discovery" if line == 2 else "discovery.backend"
    assert found == (
        f"g.yaml:{line}: {field}: unknown discovery backend 'memry' (did you mean 'memory'?); "
        "available: etcd, file, memory (or an import path 'package.module:Name')"
    )


def test_bad_discovery_ttl() -> None:
    line = only(GOOD.replace("name: g\n", "name: g\ndiscovery: {backend: memory, ttl_s: -1}\n"))
    assert line == "g.yaml:2: discovery.ttl_s: must be a number > 0 (got an integer -1)"


def test_unknown_strategy_in_depends_on() -> None:
    line = only(
        GOOD.replace(
            "depends_on: {backend: back}", "depends_on: {backend: {component: back, strategy: kvv}}"
        )
    )
    assert line == (
        "g.yaml:10: components.mid.depends_on.backend.strategy: unknown strategy 'kvv' (did you mean 'kv'?); "
        "available: direct, kv, kv_approx, kv_latency, least_loaded, random, round_robin (or an import path 'package.module:Name')"
    )


def test_strategy_in_config_is_checked_and_canonicalised() -> None:
    text = f"name: g\ncomponents:\n  r:\n    uses: {ROUTER}\n    config: {{strategy: randm}}\n"
    assert only(text).startswith(
        "g.yaml:5: components.r.config.strategy: unknown strategy 'randm' (did you mean 'random'?)"
    )
    graph = load_graph_text(text.replace("randm", "round-robin"), resolve_role=role_class)
    assert graph.component("r").config == RouterConfig(strategy="round_robin")


@pytest.mark.parametrize(
    ("uses", "message"),
    [
        ("frontnd", "unknown role 'frontnd'; built-in roles: decode_worker, frontend"),
        ("nosuch.module:X", "cannot import 'nosuch.module'"),
        ("dyn.roles.hello:Nope", "module 'dyn.roles.hello' has no attribute 'Nope'"),
        ("dyn.errors:SpecError", "'dyn.errors:SpecError' is not a component class"),
    ],
)
def test_unresolvable_uses(uses: str, message: str) -> None:
    line = only(GOOD.replace("uses: dyn.roles.hello:Backend", f"uses: {uses}"))
    assert line.startswith(f"g.yaml:12: components.back.uses: {message}")


def test_missing_declared_dependency() -> None:
    line = only(GOOD.replace("    depends_on: {backend: back}\n", ""))
    assert line == (
        "g.yaml:8: components.mid.depends_on: missing dependency 'backend' "
        "(declared by dyn.roles.hello:Middle); add it to depends_on"
    )


def test_undeclared_dependency_slot() -> None:
    found = problems(GOOD.replace("depends_on: {backend: back}", "depends_on: {backnd: back}"))
    assert found == [
        "g.yaml:10: components.mid.depends_on: missing dependency 'backend' "
        "(declared by dyn.roles.hello:Middle); add it to depends_on",
        "g.yaml:10: components.mid.depends_on.backnd: dyn.roles.hello:Middle has no dependency "
        "slot 'backnd' (did you mean 'backend'?); its slots: backend",
    ]


def test_open_dependencies_take_any_slot() -> None:
    graph = load_graph_text(
        GOOD.replace("depends_on: [mid]", "depends_on: [mid, back]"), resolve_role=role_class
    )
    assert [d.slot for d in graph.component("front").depends_on] == ["mid", "back"]


def test_placement_on_unknown_node() -> None:
    text = "name: g\nnodes: {gpu1: {host: a}}\ncomponents:\n  b: {uses: dyn.roles.hello:Backend, placement: [gpu2]}\n"
    assert only(text) == (
        "g.yaml:4: components.b.placement[0]: unknown node 'gpu2' (did you mean 'gpu1'?); nodes: gpu1"
    )


def test_route_to_component_not_depended_on() -> None:
    line = only(GOOD.replace("/gen: mid/generate", "/gen: back/generate"))
    assert line == (
        "g.yaml:7: components.front.config.routes['/gen']: 'back' is not in depends_on of "
        "'front'; add it there (it depends on: mid)"
    )


def test_route_to_unknown_endpoint() -> None:
    line = only(GOOD.replace("/gen: mid/generate", "/gen: mid/generat"))
    assert line == (
        "g.yaml:7: components.front.config.routes['/gen']: component 'mid' "
        "(dyn.roles.hello:Middle) has no endpoint 'generat' (did you mean 'generate'?); "
        "its endpoints: generate"
    )


def test_route_target_must_be_component_slash_endpoint() -> None:
    line = only(GOOD.replace("/gen: mid/generate", "/gen: mid"))
    assert (
        line
        == "g.yaml:7: components.front.config.routes['/gen']: must be 'component/endpoint' (got 'mid')"
    )


def test_all_problems_are_collected() -> None:
    text = GOOD.replace("name: g\n", "name: g\ntransport: tcpp\n") + "    replicas: 0\n"
    text = text.replace("depends_on: {backend: back}", "depends_on: {backend: bakc}")
    assert [p.split(": ")[0] for p in problems(text)] == ["g.yaml:2", "g.yaml:11", "g.yaml:14"]


def test_override_value_problem_points_at_the_override() -> None:
    line = only(HELLO.read_text(), "middle.replicas=0")
    assert line == (
        "--set middle.replicas=0: components.middle.replicas: must be an integer >= 1 "
        "(got an integer 0)"
    )


def test_override_config_problem_points_at_the_override() -> None:
    line = only(HELLO.read_text(), "frontend.port=99999")
    assert line.startswith("--set frontend.port=99999: components.frontend.config.port: must be")


def test_override_unknown_component() -> None:
    assert only(HELLO.read_text(), "midle.replicas=2") == (
        "--set midle.replicas=2: components.midle: unknown component 'midle' "
        "(did you mean 'middle'?); components: frontend, middle, backend"
    )


@pytest.mark.parametrize("text", ["middle.replicas", "replicas=2", "middle.=2", ".replicas=2"])
def test_malformed_override(text: str) -> None:
    assert only(HELLO.read_text(), text) == (
        f"--set {text}: malformed override; write it as COMPONENT.KEY=VALUE, "
        "e.g. --set middle.replicas=2"
    )


def test_override_value_must_be_yaml() -> None:
    line = only(HELLO.read_text(), "middle.replicas=[")
    assert line.startswith("--set middle.replicas=[: the value '[' is not valid YAML")


def test_override_into_a_scalar() -> None:
    line = only(HELLO.read_text(), "frontend.port.x=1")
    assert (
        line
        == "--set frontend.port.x=1: components.frontend.config.port: cannot set 'x' inside an integer 8000"
    )


def test_placement_is_not_checked_against_broken_nodes() -> None:
    text = "name: g\nnodes: [a]\ncomponents:\n  b: {uses: dyn.roles.hello:Backend, placement: a}\n"
    assert only(text) == "g.yaml:2: nodes: must be a mapping (got a list)"


def test_recursive_alias_is_rejected() -> None:
    line = only("name: g\ncomponents: &c\n  b: {uses: dyn.roles.hello:Backend, config: *c}\n")
    assert line == (
        "g.yaml:2: components.b.config: an alias refers to itself; recursive YAML is not allowed"
    )


def test_alias_bomb_is_refused_quickly() -> None:
    # Nine aliases per level, nine levels: 387 million values if expanded.
    lines = ["name: g", "l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    lines.append("components: {b: {uses: dyn.roles.hello:Backend, config: {x: *l9}}}")
    began = time.perf_counter()
    line = only("\n".join(lines) + "\n")
    assert time.perf_counter() - began < 5
    assert line.startswith("g.yaml:1: the document expands to more than 100,000 values")


@settings(deadline=None, max_examples=200)
@given(st.text(alphabet=st.sampled_from("ab:-&*[]{},\n #'\"!|>?"), max_size=120))
def test_arbitrary_text_fails_only_with_spec_errors(text: str) -> None:
    """Raw text, not only what a YAML dumper writes: anchors, tags, broken flow syntax."""
    found = _spec_problems(text, "g.yaml")
    if found is not None:
        assert found
        assert all(p.startswith("g.yaml:") for p in found)


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8))
KEYS = st.sampled_from(
    ["name", "components", "uses", "replicas", "depends_on", "config", "nodes", "port", "x"]
)
VALUES = st.recursive(
    SCALARS | st.sampled_from(["frontend", "dyn.roles.hello:Middle", "dyn.roles.hello:Backend"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(KEYS | st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(deadline=None)
@given(VALUES, st.lists(st.text(max_size=12), max_size=2))
def test_arbitrary_documents_fail_only_with_spec_errors(doc: Any, overrides: list[str]) -> None:
    text = yaml.safe_dump(doc)
    found = _spec_problems(text, "g.yaml", overrides)
    if found is not None:
        assert found
        assert all(p.startswith(("g.yaml:", "--set ")) for p in found)
