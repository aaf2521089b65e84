"""Load → dump → load gives back an equal graph, for generated graphs."""

from __future__ import annotations

from collections import Counter
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dyn.graph import GraphSpec, dump_graph, dump_graph_yaml, load_graph_text
from dyn.launch.role_classes import role_class

NAMES = st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
STRATEGIES = st.sampled_from([None, "round_robin", "round-robin", "random", "direct"])


@st.composite
def graph_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid graph: an optional frontend over a chain of Middles ending in a Backend."""
    node_names = draw(st.lists(NAMES, max_size=3, unique=True))
    nodes = {
        name: {
            "host": draw(st.from_regex(r"[a-z0-9.]{1,15}", fullmatch=True)),
            "port": draw(st.integers(1, 65535)),
            **draw(st.fixed_dictionaries({}, optional={"user": NAMES, "workdir": TEXT})),
        }
        for name in node_names
    }
    chain = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
    components: dict[str, Any] = {}
    for i, name in enumerate(chain):
        body: dict[str, Any] = {"replicas": draw(st.integers(1, 4))}
        if node_names:
            body["placement"] = draw(st.lists(st.sampled_from(node_names), min_size=1, unique=True))
        if i + 1 < len(chain):
            body["uses"] = "dyn.roles.hello:Middle"
            strategy = draw(STRATEGIES)
            target: Any = chain[i + 1]
            if strategy is not None:
                target = {"component": target, "strategy": strategy}
            body["depends_on"] = {"backend": target}
            body["config"] = {"suffix": draw(TEXT), "prefix": draw(TEXT)}
        else:
            body["uses"] = "dyn.roles.hello:Backend"
            delay = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)
            body["config"] = draw(
                st.fixed_dictionaries({}, optional={"delay_s": delay, "suffix": TEXT})
            )
        components[name] = body
    front = draw(st.sampled_from(["frontend", None]))
    if front is not None and "web" not in chain:
        components = {
            "web": {
                "uses": front,
                "depends_on": [chain[0]],
                "config": {
                    "port": draw(st.integers(1, 65535)),
                    "routes": {"/" + draw(NAMES): f"{chain[0]}/generate"},
                },
            },
            **components,
        }
    doc: dict[str, Any] = {"name": draw(st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True))}
    if draw(st.booleans()):
        doc["description"] = draw(TEXT)
    doc["discovery"] = draw(
        st.sampled_from(["memory", {"backend": "memory", "ttl_s": 0.5, "options": {"a": [1]}}])
    )
    if nodes:
        doc["nodes"] = nodes
    doc["components"] = components
    return doc


def load_doc(doc: dict[str, Any]) -> GraphSpec:
    return load_graph_text(
        yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), resolve_role=role_class
    )


@settings(deadline=None)
@given(graph_docs())
def test_dump_then_load_is_identity(doc: dict[str, Any]) -> None:
    graph = load_doc(doc)
    dumped = dump_graph(graph)
    again = load_doc(dumped)
    assert again == graph
    assert dump_graph(again) == dumped
    assert load_graph_text(dump_graph_yaml(graph), resolve_role=role_class) == graph


@settings(deadline=None)
@given(graph_docs())
def test_sorted_dump_keeps_every_component(doc: dict[str, Any]) -> None:
    # yaml.safe_dump sorts keys by default: the order changes, the components do not.
    graph = load_doc(doc)
    again = load_graph_text(yaml.safe_dump(dump_graph(graph)), resolve_role=role_class)
    assert {c.name: c for c in again.components} == {c.name: c for c in graph.components}
    assert set(again.nodes) == set(graph.nodes)


@settings(deadline=None)
@given(graph_docs())
def test_instances_spread_evenly_and_order_respects_dependencies(doc: dict[str, Any]) -> None:
    graph = load_doc(doc)
    for component in graph.components:
        counts = Counter(i.node for i in graph.instances() if i.component == component.name)
        assert sum(counts.values()) == component.replicas
        assert set(counts) <= set(component.placement)
        assert max(counts.values()) - min(counts.values()) <= 1
    position = {c.name: i for i, c in enumerate(graph.topological_order())}
    assert len(position) == len(graph.components)
    for component in graph.components:
        for dep in component.depends_on:
            assert position[dep.component] < position[component.name]
