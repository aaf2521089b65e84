"""``dyn export k8s``: a graph as plain Kubernetes manifests, kustomize-friendly.

:func:`render` turns a validated graph into files (one per component, the graph's
ConfigMap, etcd, the secrets) and a ``kustomization.yaml`` listing them; :func:`write`
puts them in a folder. Nothing rendered is specific to one cloud: no storage class, no
load-balancer annotations, no ingress.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dyn.graph import GraphSpec
from dyn.k8s import _support
from dyn.k8s._cluster_graph import dns_name, for_cluster
from dyn.k8s._workloads import METRICS_PORT, Workload, component_objects, grace_period_s
from dyn.settings import Settings

__all__ = ["METRICS_PORT", "Export", "grace_period_s", "render", "write"]


@dataclass
class Export:
    """File name -> the objects it holds (a YAML stream), plus files written as text."""

    files: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def objects(self) -> list[dict[str, Any]]:
        return [obj for objects in self.files.values() for obj in objects]


def render(
    graph: GraphSpec,
    *,
    image: str,
    namespace: str | None = None,
    settings: Settings | None = None,
    include_secrets: bool = False,
    etcd_image: str = _support.ETCD_IMAGE,
) -> Export:
    """The manifests for ``graph``; ``settings`` (this environment's) say which secrets
    and TLS files are in use, and give their values with ``include_secrets``."""
    from dyn.launch.role_classes import role_of

    settings = settings or Settings()
    http = {spec.name for spec in graph.components if role_of(spec).serves_http}
    cluster = for_cluster(graph, http)
    out = Export(notes=list(cluster.notes))
    name = dns_name(graph.name)
    tls_files = _support.tls_files(settings)
    w = Workload(
        graph_name=graph.name,
        image=image,
        kubernetes=graph.kubernetes,
        configmap=f"{name}-graph",
        secret=f"{name}-secrets",
        tls_secret=f"{name}-tls" if tls_files else None,
        tls_env=_support.tls_env(tls_files),
    )
    out.files["graph-configmap.yaml"] = [
        _support.configmap(w.configmap, graph.name, cluster.document)
    ]
    if cluster.render_etcd:
        out.files["etcd.yaml"] = _support.etcd_objects(graph.name, etcd_image)
    for spec in graph.components:
        port = getattr(spec.config, "port", None) if spec.name in http else None
        stateful = role_of(spec).uses_replica_index and spec.replicas > 1
        objects = component_objects(w, spec, port, cluster.selectors.get(spec.name, []), stateful)
        out.files[f"role-{dns_name(spec.name)}.yaml"] = objects
    generators: list[dict[str, Any]] = []
    if include_secrets:
        out.files["secrets.yaml"] = [
            _support.secret(w.secret, graph.name, _support.secret_values(settings))
        ]
        if w.tls_secret:
            out.files["secrets.yaml"].append(
                _support.tls_secret(w.tls_secret, graph.name, tls_files)
            )
    else:
        out.texts["secrets.env"] = _support.secret_env_stub()
        if set_here := sorted(_support.secret_values(settings)):
            out.notes.append(
                f"{', '.join(set_here)} set here but not written (--include-secrets writes "
                "them): fill in secrets.env"
            )
        generators.append({"name": w.secret, "envs": ["secrets.env"]})
        if w.tls_secret:
            keys = [_support.TLS_KEYS[env] for env in tls_files]
            generators.append({"name": w.tls_secret, "files": keys})
            out.notes.append(
                f"TLS is on here: copy {', '.join(keys)} beside kustomization.yaml "
                "(kustomize makes the TLS Secret of them)"
            )
    kustomization: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
    }
    if namespace:
        kustomization["namespace"] = namespace
        for obj in out.objects():
            obj["metadata"]["namespace"] = namespace
    kustomization["resources"] = list(out.files)
    if generators:
        for generator in generators:
            # Fixed names: the Deployments refer to them as they are.
            generator["options"] = {"disableNameSuffixHash": True}
        kustomization["secretGenerator"] = generators
    out.texts["kustomization.yaml"] = yaml.safe_dump(kustomization, sort_keys=False)
    return out


class _PlainDumper(yaml.SafeDumper):
    """Writes a value shared by several objects out in full each time (no &anchors)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def write(export: Export, folder: Path) -> list[Path]:
    """Write every file of ``export`` into ``folder`` (made if missing); their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, objects in export.files.items():
        path = folder / name
        text = yaml.dump_all(objects, Dumper=_PlainDumper, sort_keys=False)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    for name, text in export.texts.items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
