"""The graph as it runs on a cluster: what changes from the file, each change said once.

One role per pod: the process layout does not apply; an in-process transport becomes tcp;
memory or file discovery becomes the rendered etcd (a graph naming an external etcd keeps
it); nodes' ``host:`` and ``bind:`` give way to pods that bind every interface and
advertise their pod IP; ``placement:`` becomes a node selector from ``nodes.NAME.labels``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from dyn.errors import SpecError
from dyn.graph import ComponentSpec, GraphSpec, dump_graph

__all__ = ["ClusterGraph", "dns_name", "for_cluster"]

ETCD_CLIENT_PORT = 2379
# What every pod binds: the rendered frontends' HTTP too.
ALL_INTERFACES = "0.0.0.0"


def dns_name(*parts: str) -> str:
    """A Kubernetes object name (DNS-1123 label) from graph and component names."""
    text = "-".join(parts).lower()
    text = re.sub(r"[^a-z0-9-]+", "-", text).strip("-")
    return text[:63].rstrip("-") or "dyn"


@dataclass(frozen=True)
class ClusterGraph:
    """The graph for the ConfigMap (plain data), and what the export must render."""

    graph: GraphSpec
    document: dict[str, Any]
    etcd_url: str
    render_etcd: bool
    notes: tuple[str, ...]
    # Component name -> the node selector terms of its placement (one per node, ORed).
    selectors: dict[str, list[dict[str, str]]]


def for_cluster(graph: GraphSpec, http_components: set[str]) -> ClusterGraph:
    """Adapt ``graph``; raises :class:`SpecError` (one line) for a placement that names a
    node without labels."""
    notes: list[str] = []
    doc = dump_graph(graph)
    if graph.transport == "inproc":
        doc["transport"] = "tcp"
        notes.append("transport inproc becomes tcp: every role runs in a pod of its own")
    if graph.layout != "auto":
        notes.append(f"layout {graph.layout} does not apply: every role runs in a pod of its own")
    external = graph.discovery.backend == "etcd" and not graph.discovery.options.get("start")
    etcd_url = f"http://{dns_name(graph.name, 'etcd')}:{ETCD_CLIENT_PORT}"
    if external:
        endpoints = graph.discovery.options.get("endpoints", etcd_url)
        etcd_url = endpoints if isinstance(endpoints, str) else ",".join(map(str, endpoints))
    else:
        options = {
            k: v for k, v in graph.discovery.options.items() if k not in ("start", "endpoints")
        }
        if graph.discovery.backend != "etcd":
            options = {}
            notes.append(
                f"discovery {graph.discovery.backend} becomes etcd at {etcd_url} "
                "(rendered: etcd.yaml)"
            )
        doc["discovery"] = {
            "backend": "etcd",
            "ttl_s": graph.discovery.ttl_s,
            "options": {**options, "endpoints": etcd_url},
        }
    selectors = _selectors(graph)
    if graph.has_nodes():
        notes.append(
            "nodes' host: and bind: are ignored: pods bind 0.0.0.0 and advertise their pod IP; "
            "placement: becomes node selectors from nodes' labels:"
        )
    doc.pop("nodes", None)
    for name, body in doc["components"].items():
        body.pop("placement", None)
        if name in http_components:
            body["config"]["host"] = ALL_INTERFACES
    return ClusterGraph(graph, doc, etcd_url, not external, tuple(notes), selectors)


def _selectors(graph: GraphSpec) -> dict[str, list[dict[str, str]]]:
    if not graph.has_nodes():
        return {}
    out: dict[str, list[dict[str, str]]] = {}
    for spec in graph.components:
        out[spec.name] = [_labels_of(graph, spec, node) for node in spec.placement]
    return out


def _where(graph: GraphSpec, *path: str | int) -> str:
    """``FILE:LINE`` of a field of the graph's file, as the graph's own errors say it."""
    from pathlib import Path

    from dyn.graph._yaml import load_yaml

    try:
        text = Path(graph.source).read_text(encoding="utf-8")
    except OSError:
        return graph.source
    return load_yaml(text, graph.source)[1].where(path)


def _labels_of(graph: GraphSpec, spec: ComponentSpec, node_name: str) -> dict[str, str]:
    labels = dict(graph.node(node_name).labels)
    if not labels:
        where = _where(graph, "components", spec.name, "placement")
        raise SpecError(
            [
                f"{where}: components.{spec.name}.placement: node {node_name!r} has no "
                f"labels, so no Kubernetes node can be selected for it; give "
                f"nodes.{node_name}.labels (e.g. kubernetes.io/hostname: NAME) or drop "
                f"the placement"
            ]
        )
    return labels
