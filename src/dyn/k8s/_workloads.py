"""One component's objects: its Deployment (or StatefulSet), Services and disruption budget.

Each pod runs the role the way a launcher runs it (``dyn _role GRAPH COMPONENT REPLICA``),
with the graph from the ConfigMap, binding every interface and publishing its pod IP in
discovery. Probes and Prometheus' scrape annotations use the role's own metrics page on a
fixed port; the grace period covers dyn's drain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dyn.graph import ComponentSpec, KubernetesSpec
from dyn.k8s._cluster_graph import ALL_INTERFACES, dns_name
from dyn.launch._roles import DRAIN_TIMEOUT_S, READY_TIMEOUT_S
from dyn.settings import ADVERTISE_HOST_ENV, BIND_HOST_ENV, METRICS_PORT_ENV, REPLICA_ENV

__all__ = [
    "GRAPH_DIR",
    "METRICS_PORT",
    "PRESTOP_SLEEP_S",
    "REPLICA_ENV",
    "Workload",
    "component_objects",
]

# The role's metrics and /health page. 9464 is the port OpenTelemetry's Prometheus
# exporter uses by convention; it clashes with no port a role listens on (transports
# take free ports, frontends the graph's, 8000 by default).
METRICS_PORT = 9464
# Where the ConfigMap's graph.yaml is mounted.
GRAPH_DIR = "/etc/dyn"
# Before SIGTERM, a pod keeps serving this long so that Services stop sending it new
# connections first (endpoint removal and SIGTERM race otherwise).
PRESTOP_SLEEP_S = 5
# After the drain, deregistration and the release of resources.
STOP_MARGIN_S = 10
# A StatefulSet pod's index comes from the label Kubernetes (1.28+) sets on it.
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"


@dataclass(frozen=True)
class Workload:
    """What every workload of one export shares."""

    graph_name: str
    image: str
    kubernetes: KubernetesSpec
    configmap: str
    secret: str
    tls_secret: str | None
    tls_env: dict[str, str]


def grace_period_s() -> int:
    return int(PRESTOP_SLEEP_S + DRAIN_TIMEOUT_S + STOP_MARGIN_S)


def labels(graph_name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "dyn",
        "app.kubernetes.io/instance": dns_name(graph_name),
        "app.kubernetes.io/component": dns_name(component),
    }


def component_objects(
    w: Workload,
    spec: ComponentSpec,
    http_port: int | None,
    node_terms: list[dict[str, str]],
    stateful: bool,
) -> list[dict[str, Any]]:
    name = dns_name(w.graph_name, spec.name)
    selector = labels(w.graph_name, spec.name)
    pod = _pod_spec(w, spec, http_port, node_terms, stateful)
    template = {
        "metadata": {
            "labels": selector,
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(METRICS_PORT),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": pod,
    }
    workload: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet" if stateful else "Deployment",
        "metadata": {"name": name, "labels": selector},
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector},
            "template": template,
        },
    }
    objects = [workload]
    if stateful:
        # A StatefulSet needs a governing Service; its pods start together (no role
        # waits for a lower index) and get stable names <name>-<i>.<name>.
        workload["spec"]["serviceName"] = f"{name}-pods"
        workload["spec"]["podManagementPolicy"] = "Parallel"
        objects.append(_service(name, selector, [_port("metrics", METRICS_PORT)], headless=True))
    if http_port is not None:
        service = _service(name, selector, [_port("http", http_port)], headless=False)
        service["spec"]["type"] = w.kubernetes.service_type
        objects.append(service)
    if spec.replicas > 1:
        objects.append(
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": {"name": name, "labels": selector},
                "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
            }
        )
    return objects


def _pod_spec(
    w: Workload,
    spec: ComponentSpec,
    http_port: int | None,
    node_terms: list[dict[str, str]],
    stateful: bool,
) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        {"name": ADVERTISE_HOST_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": BIND_HOST_ENV, "value": ALL_INTERFACES},
        {"name": METRICS_PORT_ENV, "value": str(METRICS_PORT)},
    ]
    env += [{"name": key, "value": value} for key, value in w.tls_env.items()]
    replica = "0"  # a Deployment's replicas are interchangeable
    if stateful:
        label = f"metadata.labels['{POD_INDEX_LABEL}']"
        env.append({"name": REPLICA_ENV, "valueFrom": {"fieldRef": {"fieldPath": label}}})
        replica = f"$({REPLICA_ENV})"
    ports = [_container_port("metrics", METRICS_PORT)]
    if http_port is not None:
        ports.append(_container_port("http", http_port))
    health = {"httpGet": {"path": "/health", "port": "metrics"}}
    container: dict[str, Any] = {
        "name": "role",
        "image": w.image,
        "command": ["dyn", "_role"],
        "args": [f"{GRAPH_DIR}/graph.yaml", spec.name, replica, "--no-watch-stdin"],
        "env": env,
        "envFrom": [{"secretRef": {"name": w.secret, "optional": True}}],
        "ports": ports,
        "readinessProbe": {**health, "periodSeconds": 5, "failureThreshold": 2},
        # A role waits up to READY_TIMEOUT_S for its dependencies before it fails.
        "startupProbe": {
            **health,
            "periodSeconds": 2,
            "failureThreshold": int(READY_TIMEOUT_S / 2) + 5,
        },
        # Not /health: that answers 503 while the role drains, which must not restart it.
        "livenessProbe": {
            "httpGet": {"path": "/live", "port": "metrics"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_S)]}}},
        "volumeMounts": [{"name": "graph", "mountPath": GRAPH_DIR, "readOnly": True}],
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True},
    }
    if w.kubernetes.image_pull_policy:
        container["imagePullPolicy"] = w.kubernetes.image_pull_policy
    if spec.resources:
        container["resources"] = {k: dict(v) for k, v in spec.resources.items()}
    volumes: list[dict[str, Any]] = [{"name": "graph", "configMap": {"name": w.configmap}}]
    if w.tls_secret is not None:
        container["volumeMounts"].append(
            {"name": "tls", "mountPath": f"{GRAPH_DIR}/tls", "readOnly": True}
        )
        volumes.append({"name": "tls", "secret": {"secretName": w.tls_secret}})
    pod: dict[str, Any] = {
        "terminationGracePeriodSeconds": grace_period_s(),
        "containers": [container],
        "volumes": volumes,
    }
    if w.kubernetes.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in w.kubernetes.image_pull_secrets]
    if len(node_terms) == 1:
        pod["nodeSelector"] = node_terms[0]
    elif node_terms:
        # Several placement nodes: any of them (terms are ORed, a term's labels ANDed).
        terms = [
            {"matchExpressions": [
                {"key": k, "operator": "In", "values": [v]} for k, v in term.items()
            ]}
            for term in node_terms
        ]  # fmt: skip
        pod["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
            }
        }
    return pod


def _port(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "port": port, "targetPort": name, "protocol": "TCP"}


def _container_port(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "containerPort": port, "protocol": "TCP"}


def _service(
    name: str, selector: dict[str, str], ports: list[dict[str, Any]], *, headless: bool
) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": selector, "ports": ports}
    if headless:
        spec["clusterIP"] = "None"
        spec["publishNotReadyAddresses"] = True
        name = f"{name}-pods"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": selector},
        "spec": spec,
    }
