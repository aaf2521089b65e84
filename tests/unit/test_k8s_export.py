"""``dyn export k8s``: every graph renders, every object passes the Kubernetes OpenAPI
schemas in strict mode (unknown fields are errors), offline, for several versions; the
graph keys it reads are validated like the others."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from typer.testing import CliRunner

from dyn.cli.app import app
from dyn.errors import SpecError
from dyn.graph import GraphSpec, dump_graph_yaml, load_graph, load_graph_text
from dyn.k8s import grace_period_s, render
from dyn.launch._roles import DRAIN_TIMEOUT_S
from dyn.launch.role_classes import role_class
from dyn.settings import Settings, TransportSecurity

ROOT = Path(__file__).resolve().parents[2]
GRAPHS = sorted((ROOT / "graphs").glob("*.yaml"))
# Recent Kubernetes releases whose schemas kubernetes-validate bundles (StatefulSet pods'
# index label, which the proxy graph's workers read, exists from 1.28).
VERSIONS = ("1.30.0", "1.33.0", "1.37.0")


def _objects(folder: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objects = []
    for name in kustomization["resources"]:
        objects += [o for o in yaml.safe_load_all((folder / name).read_text()) if o]
    return objects


@pytest.mark.parametrize("graph", GRAPHS, ids=lambda p: p.stem)
def test_every_graph_renders_objects_valid_in_strict_mode(graph: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["export", "k8s", str(graph), "-o", str(tmp_path), "--namespace", "serving"]
    )
    assert result.exit_code == 0, result.output
    objects = _objects(tmp_path)
    kinds = [o["kind"] for o in objects]
    assert "ConfigMap" in kinds
    assert {"Deployment", "StatefulSet"} & set(kinds)
    for obj in objects:
        assert obj["metadata"]["namespace"] == "serving"
        for version in VERSIONS:
            # Raises ValidationError on any schema violation, unknown fields included.
            kubernetes_validate.validate(obj, version, strict=True)


def test_strict_validation_refuses_an_unknown_field(tmp_path: Path) -> None:
    # The check above can fail: a field Kubernetes does not know is an error.
    graph = load_graph(ROOT / "graphs" / "kv_routing.yaml", resolve_role=role_class)
    deployment = next(
        o for o in render(graph, image="dyn:t").objects() if o["kind"] == "Deployment"
    )
    deployment["spec"]["template"]["spec"]["containers"][0]["probe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_kv_routing_objects() -> None:
    graph = load_graph(ROOT / "graphs" / "kv_routing.yaml", resolve_role=role_class)
    export = render(graph, image="registry.example/dyn:1")
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in export.objects()}
    worker = by_name["Deployment", "kv-routing-worker"]
    assert worker["spec"]["replicas"] == 4
    pod = worker["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["dyn", "_role"]
    assert container["args"] == ["/etc/dyn/graph.yaml", "worker", "0", "--no-watch-stdin"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": "metrics"}
    assert pod["terminationGracePeriodSeconds"] == grace_period_s() > DRAIN_TIMEOUT_S
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9464"
    assert ("PodDisruptionBudget", "kv-routing-worker") in by_name
    assert ("PodDisruptionBudget", "kv-routing-frontend") not in by_name  # one replica
    service = by_name["Service", "kv-routing-frontend"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0]["port"] == 8000
    assert ("StatefulSet", "kv-routing-etcd") in by_name
    # The graph the pods load: tcp over the rendered etcd, frontends on every interface.
    configmap = by_name["ConfigMap", "kv-routing-graph"]
    text = configmap["data"]["graph.yaml"]
    cluster = load_graph_text(text, resolve_role=role_class)
    assert cluster.discovery.backend == "etcd"
    assert cluster.discovery.options["endpoints"] == "http://kv-routing-etcd:2379"
    assert getattr(cluster.component("frontend").config, "host") == "0.0.0.0"  # noqa: B009
    assert any("discovery memory becomes etcd" in note for note in export.notes)


def test_proxy_workers_are_a_statefulset_with_their_index() -> None:
    graph = load_graph(ROOT / "graphs" / "proxy.yaml", resolve_role=role_class)
    objects = render(graph, image="dyn:t").objects()
    workers = next(o for o in objects if o["metadata"]["name"] == "proxy-worker")
    assert workers["kind"] == "StatefulSet"
    container = workers["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][2] == "$(DYN_REPLICA)"
    env = {e["name"]: e for e in container["env"]}
    index = env["DYN_REPLICA"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert index == "metadata.labels['apps.kubernetes.io/pod-index']"
    names = {o["metadata"]["name"] for o in objects if o["kind"] == "Service"}
    assert workers["spec"]["serviceName"] in names


def test_inproc_hello_world_becomes_tcp_with_one_line() -> None:
    graph = load_graph(ROOT / "graphs" / "hello_world.yaml", resolve_role=role_class)
    export = render(graph, image="dyn:t")
    assert [n for n in export.notes if "inproc" in n] == [
        "transport inproc becomes tcp: every role runs in a pod of its own"
    ]
    configmap = next(o for o in export.objects() if o["kind"] == "ConfigMap")
    assert yaml.safe_load(configmap["data"]["graph.yaml"])["transport"] == "tcp"


def test_multinode_host_and_bind_ignored_with_one_line_placement_from_labels(
    tmp_path: Path,
) -> None:
    result = CliRunner().invoke(
        app, ["export", "k8s", str(ROOT / "graphs" / "multinode.yaml"), "-o", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if "host:" in line]
    assert lines == [
        "note: nodes' host: and bind: are ignored: pods bind 0.0.0.0 and advertise their "
        "pod IP; placement: becomes node selectors from nodes' labels:"
    ]
    objects = {o["metadata"]["name"]: o for o in _objects(tmp_path) if o["kind"] == "Deployment"}
    front = objects["multinode-frontend"]["spec"]["template"]["spec"]
    assert front["nodeSelector"] == {"kubernetes.io/hostname": "node1"}
    workers = objects["multinode-worker"]["spec"]["template"]["spec"]
    terms = workers["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    values = [t["matchExpressions"][0]["values"] for t in terms["nodeSelectorTerms"]]
    assert values == [["node2"], ["node3"]]
    document = yaml.safe_load(
        next(o for o in _objects(tmp_path) if o["kind"] == "ConfigMap")["data"]["graph.yaml"]
    )
    assert "nodes" not in document
    assert "192.168.1.11" not in yaml.safe_dump(document)


def test_placement_on_a_node_without_labels_is_refused_in_one_line(tmp_path: Path) -> None:
    text = (ROOT / "graphs" / "multinode.yaml").read_text()
    text = text.replace("    labels: {kubernetes.io/hostname: node2}\n", "")
    graph_file = tmp_path / "g.yaml"
    graph_file.write_text(text)
    result = CliRunner().invoke(app, ["export", "k8s", str(graph_file), "-o", str(tmp_path / "o")])
    assert result.exit_code != 0
    line = next(n for n, text in enumerate(text.splitlines(), 1) if "placement: [node2" in text)
    assert result.stderr.strip().splitlines() == [
        f"{graph_file}:{line}: components.worker.placement: node 'node2' has no labels, so no "
        "Kubernetes node can be selected for it; give nodes.node2.labels (e.g. "
        "kubernetes.io/hostname: NAME) or drop the placement"
    ]
    assert not (tmp_path / "o").exists()


K8S_GRAPH = """\
name: g
kubernetes:
  image_pull_policy: IfNotPresent
  image_pull_secrets: [regcred]
  service_type: LoadBalancer
components:
  frontend:
    uses: frontend
    depends_on: [worker]
    config: {routes: {/generate: worker/generate}}
  worker:
    uses: dyn.roles.hello:Backend
    replicas: 2
    resources:
      requests: {cpu: 500m, memory: 1Gi}
      limits: {memory: 2Gi, nvidia.com/gpu: 1}
"""


def test_kubernetes_keys_render_and_round_trip() -> None:
    graph = load_graph_text(K8S_GRAPH, resolve_role=role_class)
    assert load_graph_text(dump_graph_yaml(graph), resolve_role=role_class) == graph
    objects = render(graph, image="dyn:t").objects()
    worker = next(o for o in objects if o["metadata"]["name"] == "g-worker")
    pod = worker["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    container = pod["containers"][0]
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"memory": "2Gi", "nvidia.com/gpu": "1"},
    }
    service = next(
        o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "g-frontend"
    )
    assert service["spec"]["type"] == "LoadBalancer"
    for obj in objects:
        kubernetes_validate.validate(obj, VERSIONS[-1], strict=True)


def test_kubernetes_keys_are_checked_with_file_and_line() -> None:
    bad = (
        K8S_GRAPH.replace("IfNotPresent", "Sometimes")
        .replace("LoadBalancer", "Ingress")
        .replace("cpu: 500m", "cpu: lots")
        .replace("  worker:\n", "  worker:\n    resource: {}\n")
    )
    with pytest.raises(SpecError) as caught:
        load_graph_text(bad, "g.yaml", resolve_role=role_class)
    assert caught.value.problems == [
        "g.yaml:3: kubernetes.image_pull_policy: unknown value 'Sometimes'; choose one of "
        "Always, IfNotPresent, Never",
        "g.yaml:5: kubernetes.service_type: unknown value 'Ingress'; choose one of "
        "ClusterIP, NodePort, LoadBalancer",
        "g.yaml:12: components.worker.resource: unknown key 'resource' (did you mean "
        "'resources'?); valid keys: uses, replicas, placement, depends_on, config, resources",
        "g.yaml:16: components.worker.resources.requests.cpu: must be a quantity such as 2, "
        "500m, 4Gi (got a string 'lots')",
    ]


def test_bad_node_labels_are_refused() -> None:
    text = (ROOT / "graphs" / "multinode.yaml").read_text()
    text = text.replace("{kubernetes.io/hostname: node2}", "{kubernetes.io/hostname: 'no spaces'}")
    with pytest.raises(SpecError) as caught:
        load_graph_text(text, "m.yaml", resolve_role=role_class)
    (problem,) = caught.value.problems
    assert problem.startswith(
        "m.yaml:31: nodes.node2.labels['kubernetes.io/hostname']: 'no spaces' is not a label value"
    )


def test_dyn_up_ignores_the_kubernetes_keys() -> None:
    """The graph with every export-only key runs as dyn up runs it (in one process here)
    and serves; its resources and pull settings change nothing on this machine."""
    import anyio
    import httpx
    from _kv_graph_inprocess import serve_graph

    assert load_graph_text(K8S_GRAPH, resolve_role=role_class).component("worker").replicas == 2

    async def main() -> str:
        def load(port: str) -> GraphSpec:
            return load_graph_text(K8S_GRAPH, overrides=[port], resolve_role=role_class)

        async with serve_graph(load) as url, httpx.AsyncClient(trust_env=False) as client:
            response = await client.post(f"{url}/generate", content=b'{"text": "hi"}', timeout=10)
        return response.text

    assert "Backend: hi" in anyio.run(main)


def test_secrets_only_with_include_secrets(tmp_path: Path) -> None:
    graph = load_graph(ROOT / "graphs" / "kv_routing.yaml", resolve_role=role_class)
    cert = tmp_path / "c.pem"
    cert.write_text("CERT")
    settings = Settings(
        admin_token="adm-123",
        transport=TransportSecurity(cluster_secret="s3cret", tls_cert=str(cert)),
    )
    stub = render(graph, image="dyn:t", settings=settings)
    everything = yaml.safe_dump_all(stub.objects()) + "".join(stub.texts.values())
    assert "adm-123" not in everything
    assert "s3cret" not in everything
    kustomization = yaml.safe_load(stub.texts["kustomization.yaml"])
    assert [g["name"] for g in kustomization["secretGenerator"]] == [
        "kv-routing-secrets",
        "kv-routing-tls",
    ]
    assert "# DYN_ADMIN_TOKEN=" in stub.texts["secrets.env"]
    full = render(graph, image="dyn:t", settings=settings, include_secrets=True)
    secrets = [o for o in full.objects() if o["kind"] == "Secret"]
    assert secrets[0]["stringData"] == {
        "DYN_ADMIN_TOKEN": "adm-123",
        "DYN_CLUSTER_SECRET": "s3cret",
    }
    assert secrets[1]["data"] == {"tls.crt": "Q0VSVA=="}
    worker = next(o for o in full.objects() if o["metadata"]["name"] == "kv-routing-worker")
    env = {
        e["name"]: e.get("value")
        for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["DYN_TLS_CERT"] == "/etc/dyn/tls/tls.crt"
    for obj in full.objects():
        kubernetes_validate.validate(obj, VERSIONS[-1], strict=True)
