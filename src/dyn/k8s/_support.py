"""The objects around the roles: the graph's ConfigMap, etcd, and the secrets.

Secrets are dyn's environment settings (the cluster secret, the API key, the admin token,
the TLS files), never graph keys. Their values reach the output only when asked
(``--include-secrets``); otherwise kustomize generates the Secrets from files beside
``kustomization.yaml`` that the operator fills in.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from dyn.errors import ConfigError
from dyn.k8s._cluster_graph import ETCD_CLIENT_PORT, dns_name
from dyn.k8s._workloads import GRAPH_DIR, labels
from dyn.settings import (
    ADMIN_TOKEN_ENV,
    API_KEY_ENV,
    CLUSTER_SECRET_ENV,
    TLS_CA_ENV,
    TLS_CERT_ENV,
    TLS_KEY_ENV,
    Settings,
)

__all__ = [
    "ETCD_IMAGE",
    "SECRET_ENV_NAMES",
    "configmap",
    "etcd_objects",
    "secret_env_stub",
    "secret_values",
    "tls_files",
]

# etcd's own release image (the project's registry; any etcd 3.5 works).
ETCD_IMAGE = "quay.io/coreos/etcd:v3.5.17"
ETCD_PEER_PORT = 2380
ETCD_STORAGE = "1Gi"
SECRET_ENV_NAMES = (ADMIN_TOKEN_ENV, API_KEY_ENV, CLUSTER_SECRET_ENV)
# Each TLS setting: its file's key in the TLS Secret (the names cert-manager writes).
TLS_KEYS = {TLS_CERT_ENV: "tls.crt", TLS_KEY_ENV: "tls.key", TLS_CA_ENV: "ca.crt"}


def configmap(name: str, graph_name: str, document: dict[str, Any]) -> dict[str, Any]:
    text = yaml.safe_dump(document, sort_keys=False)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels(graph_name, "graph")},
        "data": {"graph.yaml": text},
    }


def etcd_objects(graph_name: str, image: str) -> list[dict[str, Any]]:
    """One etcd member with a persistent volume, behind a headless Service whose name is
    the endpoint the roles use."""
    name = dns_name(graph_name, "etcd")
    selector = labels(graph_name, "etcd")
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": selector},
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            "ports": [
                {"name": "client", "port": ETCD_CLIENT_PORT, "targetPort": "client"},
                {"name": "peer", "port": ETCD_PEER_PORT, "targetPort": "peer"},
            ],
        },
    }
    peer = f"http://localhost:{ETCD_PEER_PORT}"  # one member: no peer traffic
    container = {
        "name": "etcd",
        "image": image,
        "command": ["etcd"],
        "args": [
            "--name=default",
            "--data-dir=/var/lib/etcd/data",
            f"--listen-client-urls=http://0.0.0.0:{ETCD_CLIENT_PORT}",
            f"--advertise-client-urls=http://{name}:{ETCD_CLIENT_PORT}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
        ],
        "ports": [
            {"name": "client", "containerPort": ETCD_CLIENT_PORT, "protocol": "TCP"},
            {"name": "peer", "containerPort": ETCD_PEER_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {"httpGet": {"path": "/health", "port": "client"}, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": "client"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/etcd"}],
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "labels": selector},
        "spec": {
            "replicas": 1,
            "serviceName": name,
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": selector}, "spec": {"containers": [container]}},
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": ETCD_STORAGE}},
                    },
                }
            ],
        },
    }
    return [service, statefulset]


def tls_files(settings: Settings) -> dict[str, str]:
    """The TLS settings in force (variable -> the file's path here), if any."""
    security = settings.transport.as_env()
    return {env: security[env] for env in TLS_KEYS if env in security}


def tls_env(files: dict[str, str]) -> dict[str, str]:
    """Where a pod finds each TLS file (the TLS Secret mounted under GRAPH_DIR/tls)."""
    return {env: f"{GRAPH_DIR}/tls/{TLS_KEYS[env]}" for env in files}


def secret_values(settings: Settings) -> dict[str, str]:
    """The secret settings that are set here, by variable."""
    values = {ADMIN_TOKEN_ENV: settings.admin_token, API_KEY_ENV: settings.api_key}
    values[CLUSTER_SECRET_ENV] = settings.transport.cluster_secret
    return {k: v for k, v in values.items() if v}


def secret(name: str, graph_name: str, values: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": labels(graph_name, "secrets")},
        "type": "Opaque",
        "stringData": values,
    }


def tls_secret(name: str, graph_name: str, files: dict[str, str]) -> dict[str, Any]:
    data = {}
    for env, path in files.items():
        try:
            data[TLS_KEYS[env]] = base64.b64encode(Path(path).read_bytes()).decode()
        except OSError as exc:
            raise ConfigError(f"{env}={path}: cannot read the file: {exc.strerror}") from exc
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": labels(graph_name, "tls")},
        "type": "Opaque",
        "data": data,
    }


def secret_env_stub() -> str:
    lines = [
        "# The dyn settings kustomize puts in the roles' Secret: uncomment and fill in.",
        "# An admin token is needed for the frontend's admin routes (dyn status --url),",
        "# a cluster secret to keep other pods off the roles' transport.",
    ]
    lines += [f"# {name}=" for name in SECRET_ENV_NAMES]
    return "\n".join(lines) + "\n"
