"""Turning a validated graph back into the plain data a graph file holds."""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import yaml

from dyn.graph.model import ComponentSpec, GraphSpec, KubernetesSpec, NodeSpec

__all__ = ["dump_graph", "dump_graph_yaml"]


def dump_graph(spec: GraphSpec) -> dict[str, Any]:
    """Plain builtins that load back into an equal graph.

    Order matters (components and nodes keep theirs), so write it with
    ``yaml.safe_dump(..., sort_keys=False)`` or use :func:`dump_graph_yaml`.
    """
    out: dict[str, Any] = {"name": spec.name, "namespace": spec.namespace}
    if spec.description is not None:
        out["description"] = spec.description
    if spec.transport_options:
        out["transport"] = {
            "backend": spec.transport,
            "options": copy.deepcopy(dict(spec.transport_options)),
        }
    else:
        out["transport"] = spec.transport
    out["layout"] = spec.layout
    out["discovery"] = {
        "backend": spec.discovery.backend,
        "ttl_s": spec.discovery.ttl_s,
        "options": copy.deepcopy(dict(spec.discovery.options)),
    }
    out["nodes"] = {node.name: _node(node) for node in spec.nodes}
    if spec.model is not None:
        out["model"] = msgspec.to_builtins(spec.model)
    if not spec.kubernetes.is_default():
        out["kubernetes"] = _kubernetes(spec.kubernetes)
    out["components"] = {c.name: _component(c) for c in spec.components}
    return out


def dump_graph_yaml(spec: GraphSpec) -> str:
    """The graph as YAML text, in the order it was written."""
    return yaml.safe_dump(dump_graph(spec), sort_keys=False)


def _node(node: NodeSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"host": node.host}
    if node.user is not None:
        out["user"] = node.user
    out["port"] = node.port
    out["ssh_options"] = list(node.ssh_options)
    out["python"] = node.python
    if node.workdir is not None:
        out["workdir"] = node.workdir
    out["bind"] = node.bind
    if node.labels:
        out["labels"] = dict(node.labels)
    return out


def _kubernetes(spec: KubernetesSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if spec.image_pull_policy is not None:
        out["image_pull_policy"] = spec.image_pull_policy
    if spec.image_pull_secrets:
        out["image_pull_secrets"] = list(spec.image_pull_secrets)
    out["service_type"] = spec.service_type
    return out


def _component(spec: ComponentSpec) -> dict[str, Any]:
    depends_on: list[str] | dict[str, Any]
    if all(d.slot == d.component and d.strategy is None for d in spec.depends_on):
        depends_on = [d.component for d in spec.depends_on]
    else:
        depends_on = {
            d.slot: {"component": d.component, "strategy": d.strategy}
            if d.strategy is not None
            else d.component
            for d in spec.depends_on
        }
    out = {
        "uses": spec.uses,
        "replicas": spec.replicas,
        "placement": list(spec.placement),
        "depends_on": depends_on,
        "config": msgspec.to_builtins(spec.config),
    }
    if spec.resources:
        out["resources"] = {kind: dict(amounts) for kind, amounts in spec.resources.items()}
    return out
