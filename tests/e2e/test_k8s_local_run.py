"""The rendered kv_routing manifests, run as local processes: each container's command,
args and environment as Kubernetes would start it, with a loopback address as its pod IP.

What stands in for the cluster, and only that: the ConfigMap is written to a folder
(the volume mount), the etcd Service's name is replaced by the etcd pod's address
(cluster DNS), ``status.podIP`` is the pod's loopback address, and each pod binds that
address instead of 0.0.0.0 (pods here share one network namespace, so two metrics pages
on the rendered fixed port need two addresses). Then: a request through the frontend's
Service port answers, every probe path answers 200, and SIGTERM to every role while
requests are in flight drains within the rendered grace period without a failed request.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from _dyn_graph import ROOT, free_port

from dyn.graph import load_graph
from dyn.k8s import render, write
from dyn.launch.role_classes import role_class

ETCD = shutil.which("etcd")
DYN = Path(sys.executable).with_name("dyn")
# This test's own loopback addresses (any 127.x.y.z is loopback on Linux).
POD_NET = "127.19.0."
IN_FLIGHT = 16
MAX_TOKENS = 100

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(ETCD is None, reason="needs etcd (apt-get install etcd-server)"),
    pytest.mark.timeout(240),
]


def _pod_env(container: dict[str, Any], pod_ip: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYN_")}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif item["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP":
            env[item["name"]] = pod_ip
    env["DYN_BIND_HOST"] = pod_ip  # see the module docstring
    return env


def _wait_ok(url: str, timeout_s: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return response
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} never answered 200"
        time.sleep(0.2)


def test_rendered_kv_routing_serves_probes_and_drains(tmp_path: Path) -> None:
    port = free_port()
    graph = load_graph(
        ROOT / "graphs" / "kv_routing.yaml",
        [f"frontend.port={port}", "worker.timing={fixed: {prefill_ms: 0, decode_ms: 20}}"],
        resolve_role=role_class,
    )
    export = render(graph, image="dyn:test")
    write(export, tmp_path / "k8s")
    objects = export.objects()
    etcd_set = next(
        o
        for o in objects
        if o["metadata"]["name"] == "kv-routing-etcd" and o["kind"] == "StatefulSet"
    )
    workloads = [
        o for o in objects if o["kind"] in ("Deployment", "StatefulSet") and o is not etcd_set
    ]
    ips = iter(f"{POD_NET}{i}" for i in range(10, 250))
    procs: list[tuple[str, subprocess.Popen[bytes], dict[str, Any]]] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        # etcd, from its rendered container.
        etcd_ip = next(ips)
        container = etcd_set["spec"]["template"]["spec"]["containers"][0]
        args = [
            a.replace("0.0.0.0", etcd_ip)
            .replace("kv-routing-etcd", etcd_ip)
            .replace("localhost", etcd_ip)
            .replace("/var/lib/etcd", str(tmp_path / "etcd"))
            for a in container["args"]
        ]
        assert container["command"] == ["etcd"]
        with (logs / "etcd.log").open("wb") as log:
            etcd = subprocess.Popen([str(ETCD), *args], stdout=log, stderr=log)
        procs.append(("etcd", etcd, container))
        _wait_ok(f"http://{etcd_ip}:2379/health")
        # The ConfigMap, mounted; the cluster DNS name of etcd, resolved.
        configmap = next(o for o in objects if o["kind"] == "ConfigMap")
        mount = tmp_path / "etc-dyn"
        mount.mkdir()
        text = configmap["data"]["graph.yaml"].replace("kv-routing-etcd", etcd_ip)
        (mount / "graph.yaml").write_text(text)
        pods: dict[str, list[str]] = {}
        for workload in workloads:
            pod = workload["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            assert container["command"] == ["dyn", "_role"]
            for i in range(workload["spec"]["replicas"]):
                ip = next(ips)
                name = f"{workload['metadata']['name']}-{i}"
                args = [a.replace("/etc/dyn", str(mount)) for a in container["args"]]
                with (logs / f"{name}.log").open("wb") as log:
                    proc = subprocess.Popen(
                        [str(DYN), "_role", *args],
                        env=_pod_env(container, ip),
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                    )
                procs.append((name, proc, pod))
                pods.setdefault(workload["metadata"]["name"], []).append(ip)
        # Every pod's readiness, startup and liveness probe answers 200.
        for workload in workloads:
            (container,) = workload["spec"]["template"]["spec"]["containers"]
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            for ip in pods[workload["metadata"]["name"]]:
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    get = container[probe]["httpGet"]
                    _wait_ok(f"http://{ip}:{ports[get['port']]}{get['path']}")
        # A request through the frontend's Service port (its target, on the pod).
        service = next(
            o
            for o in objects
            if o["kind"] == "Service" and o["metadata"]["name"] == "kv-routing-frontend"
        )
        (front_ip,) = pods["kv-routing-frontend"]
        (front,) = next(w for w in workloads if w["metadata"]["name"] == "kv-routing-frontend")[
            "spec"
        ]["template"]["spec"]["containers"]
        target = service["spec"]["ports"][0]["targetPort"]
        target_port = next(p["containerPort"] for p in front["ports"] if p["name"] == target)
        url = f"http://{front_ip}:{target_port}/v1/completions"
        body = {"model": "dyn-mock", "prompt": "Hello there", "max_tokens": 8}
        _wait_until_served(url, body)
        # Load, then SIGTERM to every role with requests in flight.
        grace = workloads[0]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        long = {**body, "max_tokens": MAX_TOKENS, "ignore_eos": True}
        with concurrent.futures.ThreadPoolExecutor(IN_FLIGHT) as pool:
            futures = [pool.submit(_complete, url, long) for _ in range(IN_FLIGHT)]
            time.sleep(0.5)
            assert not any(f.done() for f in futures), "requests ended before SIGTERM"
            roles = [(n, p) for n, p, _ in procs if n != "etcd"]
            for _, proc in roles:
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            codes = {n: proc.wait(max(0.1, deadline - time.monotonic())) for n, proc in roles}
            results = [f.result() for f in futures]
        failed = [r for r in results if r[0] != 200 or r[1] != MAX_TOKENS]
        print(
            f"k8s local run: {len(results) + 1} requests sent, "
            f"{len(results) + 1 - len(failed)} succeeded; {len(roles)} roles exited "
            f"{sorted(set(codes.values()))} within the {grace} s grace period"
        )
        assert set(codes.values()) == {0}, codes
        assert not failed, failed
    finally:
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def _wait_until_served(url: str, body: dict[str, Any]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            response = httpx.post(url, json=body, timeout=10)
            if response.status_code == 200:
                assert response.json()["choices"][0]["text"]
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the frontend never answered a completion"
        time.sleep(0.3)


def _complete(url: str, body: dict[str, Any]) -> tuple[int, int]:
    response = httpx.post(url, json=body, timeout=60)
    tokens = (
        response.json().get("usage", {}).get("completion_tokens", 0)
        if response.status_code == 200
        else 0
    )
    return response.status_code, tokens
