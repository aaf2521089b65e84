"""graphs/multinode.yaml on three real "machines": network namespaces with an sshd each.

`dyn up` runs on node1 (inside its namespace) and starts etcd there; the ssh launcher
starts the frontend and processor on node1 and one worker on each of node2 and node3,
every role through OpenSSH with a key this test generated. The test reaches the
frontend over the bridge it created. Without root or iproute2, the same tests run
against three sshds on loopback ports instead (the reason is printed in the test id).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from _cluster import (
    SSHD,
    Cluster,
    LoginRefused,
    loopback_cluster,
    netns_cluster,
    netns_possible,
)
from _dyn_graph import DynProcess, free_port

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
DYN = str(Path(sys.executable).with_name("dyn"))
TTL_S = 1.0
FRONTEND_PORT = 8000
# DYN_TEST_LOOPBACK_SSH=1 runs the loopback variant even where namespaces would work.
_WHY_NOT_NETNS = (
    "DYN_TEST_LOOPBACK_SSH is set" if os.environ.get("DYN_TEST_LOOPBACK_SSH") else netns_possible()
)
VARIANT = "netns" if _WHY_NOT_NETNS is None else f"loopback ({_WHY_NOT_NETNS})"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if os.environ.get("DYN_SKIP_SSH"):
        pytest.skip("DYN_SKIP_SSH is set")
    if subprocess.run(["which", "ssh", "ssh-keygen"], capture_output=True).returncode:
        pytest.skip("the OpenSSH client is not installed (apt-get install openssh-client)")
    if not Path(SSHD).exists():
        pytest.skip("sshd is not installed (apt-get install openssh-server)")
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    root = tmp_path_factory.mktemp("cluster")
    try:
        if _WHY_NOT_NETNS is None:
            try:
                made = netns_cluster(root)
            except LoginRefused:
                raise
            except Exception as exc:  # namespaces half-work here: say so, use loopback
                print(f"\nmulti-node tests fall back to loopback sshds: {exc}")
                made = loopback_cluster(root / "loopback")
        else:
            made = loopback_cluster(root)
    except LoginRefused as exc:
        pytest.skip(f"sshd will not let root in: {exc}")
    yield made
    made.close()


def write_graph(cluster: Cluster, path: Path, offset: int = 0, **changes: Any) -> Path:
    """A copy of graphs/multinode.yaml pointed at the test's nodes. Graphs that run
    beside the module's shared one take an ``offset`` for their ports on node1."""
    doc = yaml.safe_load((REPO / "graphs" / "multinode.yaml").read_text())
    first = cluster.nodes[0]
    etcd_port = 2379 + 10 * offset if first.netns else free_port()
    doc["discovery"]["ttl_s"] = TTL_S
    doc["discovery"]["options"]["endpoints"] = f"http://{first.address}:{etcd_port}"
    doc["nodes"] = {
        node.name: {
            "host": node.address,
            "port": node.ssh_port,
            "bind": node.address,
            "python": sys.executable,
            "ssh_options": cluster.ssh_options(),
        }
        for node in cluster.nodes
    }
    frontend = doc["components"]["frontend"]["config"]
    frontend["host"] = first.address
    frontend["port"] = FRONTEND_PORT + offset if first.netns else free_port()
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        target = doc
        for key in parents:
            target = target[key]
        target[leaf] = value
    path.write_text(yaml.safe_dump(doc))
    return path


def on_node(node: Any) -> list[str]:
    """The command that runs dyn on ``node`` (inside its namespace, if it has one)."""
    return ["ip", "netns", "exec", node.netns, DYN] if node.netns else [DYN]


class Up(DynProcess):
    """`dyn up` running on node1."""

    def __init__(self, cluster: Cluster, graph: Path, state_dir: Path) -> None:
        self.cluster = cluster
        super().__init__(
            "up",
            str(graph),
            log_path=state_dir / "up.log",
            state=state_dir,
            command=on_node(cluster.nodes[0]),
        )
        self.url = self.wait_serving(timeout=90)

    def status(self) -> dict[str, Any]:
        out = subprocess.run(
            [DYN, "status", "--json"], env=self.env, capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    def record(self) -> dict[str, Any]:
        path = next(Path(self.env["DYN_STATE_DIR"]).glob("runs/*/run.json"))
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.record()['admin_token']}"}

    def generate(self, prompt: str) -> httpx.Response:
        return httpx.post(f"{self.url}/generate", json={"prompt": prompt}, timeout=10)

    def output(self) -> str:
        return self.log()


@pytest.fixture(scope="module")
def up(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    state_dir = tmp_path_factory.mktemp("state")
    # Retries off: a request routed to a dead worker then fails visibly (see below).
    graph = write_graph(
        cluster, state_dir / "multinode.yaml", components__processor__config__retries=0
    )
    running = Up(cluster, graph, state_dir)
    yield running
    running.stop()


@pytest.mark.parametrize("variant", [VARIANT])
def test_responses_name_both_worker_nodes(up: Up, variant: str) -> None:
    texts = []
    for i in range(8):
        response = up.generate(f"hello{i}")
        assert response.status_code == 200, response.text
        texts.append(response.json()["text"])
    assert all(t.startswith("hello") and "_ProcessedBy_node1_GeneratedBy_node" in t for t in texts)
    assert {t.rsplit("_", 1)[1] for t in texts} == {"node2", "node3"}


def test_status_lists_every_role_on_its_node(up: Up) -> None:
    rows = {row["role"]: row for row in up.status()["instances"]}
    assert {role: row["node"] for role, row in rows.items()} == {
        "frontend": "node1",
        "processor": "node1",
        "worker[0]": "node2",
        "worker[1]": "node3",
    }
    addresses = {node.name: node.address for node in up.cluster.nodes}
    for row in rows.values():
        assert row["state"] == "healthy"
        assert row["host"] == addresses[row["node"]]
        assert isinstance(row["pid"], int)
        assert row["pid"] > 0


def test_etcd_paused_under_load_fails_nothing_and_roles_register_again(up: Up) -> None:
    """SIGSTOP etcd for 5 s (5 TTLs) under load: its leases lapse, so when it resumes it
    revokes them all; every role registers again and no request fails meanwhile."""
    record = up.record()
    etcd = f"http://{up.cluster.nodes[0].address}:{_etcd_port(record)}"
    before = _lease_ids(etcd)
    assert len(before) >= 4  # one per role process
    outcomes: list[tuple[float, int]] = []
    done = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not done.is_set() and len(outcomes) < 20000:
                began = time.time()
                response = client.post(f"{up.url}/generate", json={"prompt": "p"})
                outcomes.append((began, response.status_code))

    sender = threading.Thread(target=load)
    sender.start()
    try:
        time.sleep(0.5)
        os.kill(record["etcd_pid"], signal.SIGSTOP)
        time.sleep(5)
        os.kill(record["etcd_pid"], signal.SIGCONT)
        resumed = time.monotonic()
        back = None
        with httpx.Client(timeout=10, headers=up.admin_headers()) as client:
            while time.monotonic() - resumed < 15:
                rows = client.get(f"{up.url}/admin/status").json()["instances"]
                after = _lease_ids(etcd)
                healthy = [r for r in rows if r["state"] == "healthy"]
                if len(healthy) == 4 and after and not after & before:
                    back = time.monotonic() - resumed
                    break
                time.sleep(0.05)
        time.sleep(1)  # and a little traffic after that
    finally:
        done.set()
        sender.join()
    failed = [code for _, code in outcomes if code != 200]
    print(
        f"etcd paused 5 s: {len(outcomes)} requests, {len(failed)} failed; every role "
        f"registered again {back} s after etcd resumed"
    )
    assert back is not None, "the roles did not register again with new leases"
    assert len(outcomes) > 50
    assert failed == []


def _etcd_port(record: dict[str, Any]) -> int:
    graph = yaml.safe_load(Path(record["graph_file"]).read_text())
    return int(graph["discovery"]["options"]["endpoints"].rsplit(":", 1)[1])


def _lease_ids(etcd: str) -> set[str]:
    try:
        response = httpx.post(f"{etcd}/v3/lease/leases", json={}, timeout=1)
    except httpx.HTTPError:
        return set()
    return {lease["ID"] for lease in response.json().get("leases", [])}


def test_scale_adds_then_drains_a_worker(up: Up) -> None:
    node1 = up.cluster.nodes[0]
    added = node1.run([DYN, "scale", "worker", "3"], env=up.env, timeout=90)
    assert added.returncode == 0, added.stderr
    assert "started worker[2] on node2" in added.stdout
    workers = [r for r in up.status()["instances"] if r["component"] == "worker"]
    assert sorted((r["role"], r["node"], r["state"]) for r in workers) == [
        ("worker[0]", "node2", "healthy"),
        ("worker[1]", "node3", "healthy"),
        ("worker[2]", "node2", "healthy"),
    ]
    ends = [up.generate(f"s{i}").json()["text"].rsplit("_", 1)[1] for i in range(9)]
    assert ends.count("node2") == 6  # round-robin over 3
    assert ends.count("node3") == 3
    drained = node1.run([DYN, "scale", "worker", "2"], env=up.env, timeout=90)
    assert drained.returncode == 0, drained.stderr
    assert "drained and stopped worker[2] on node2" in drained.stdout
    workers = [r for r in up.status()["instances"] if r["component"] == "worker"]
    assert sorted(r["role"] for r in workers) == ["worker[0]", "worker[1]"]
    refused = node1.run([DYN, "scale", "frontend", "2"], env=up.env, timeout=30)
    assert refused.returncode == 1
    assert "frontends cannot be scaled" in refused.stderr


def test_killed_worker_leaves_status_and_routing_within_ttl(up: Up) -> None:
    victim = next(r for r in up.status()["instances"] if r["node"] == "node3")
    # Requests run back to back from the kill on; with retries off in this copy of the
    # graph, one routed to the dead worker fails, so the outcomes show when routing
    # stopped choosing it.
    outcomes: list[tuple[float, bool]] = []  # (wall-clock start, landed on node2)
    done = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=10) as client:
            while not done.is_set() and len(outcomes) < 5000:
                began = time.time()
                response = client.post(f"{up.url}/generate", json={"prompt": "p"})
                ok = response.status_code == 200 and response.json()["text"].endswith("node2")
                outcomes.append((began, ok))

    os.kill(victim["pid"], signal.SIGKILL)  # namespaces share this machine's pids
    killed = time.time()
    sender = threading.Thread(target=load)
    sender.start()
    out_of_status = None
    try:
        # The route behind `dyn status`, polled directly: the CLI's own start-up (~0.5 s
        # on a busy 2-core machine) would blur the measurement.
        with httpx.Client(timeout=10, headers=up.admin_headers()) as client:
            while time.time() - killed < TTL_S + 10:
                data = client.get(f"{up.url}/admin/status").json()
                rows = [r for r in data["instances"] if r["node"] == "node3"]
                if not any(r["state"] == "healthy" for r in rows):
                    # `time` is when the frontend read discovery for this answer.
                    out_of_status = data["time"] - killed
                    break
                time.sleep(0.02)
        time.sleep(TTL_S + 1)  # then at least TTL + 1 s of traffic to judge routing by
    finally:
        done.set()
        sender.join()
    bad = [began for began, ok in outcomes if not ok]
    out_of_routing = (max(bad) - killed) if bad else 0.0
    print(
        f"worker on node3 out of status after {out_of_status} s, out of routing after "
        f"{out_of_routing:.3f} s ({len(bad)} of {len(outcomes)} requests failed)"
    )
    assert out_of_status is not None
    assert out_of_status <= TTL_S + 1
    assert out_of_routing <= TTL_S + 1
    assert len(outcomes) > len(bad)
    # And it stays out: every later request lands on node2.
    assert all(ok for began, ok in outcomes if began > killed + TTL_S + 1)
    # `dyn status` itself shows the dead worker as no longer healthy.
    rows = [r for r in up.status()["instances"] if r["node"] == "node3"]
    assert rows
    assert all(r["state"] == "unhealthy" for r in rows)


def test_a_worker_started_by_hand_registers_and_gets_traffic(up: Up) -> None:
    """After the kill above only node2 serves; a worker started by hand on node3 (in its
    namespace, with the same graph file) joins through etcd and receives requests."""
    node3 = up.cluster.nodes[2]
    before = [r for r in up.status()["instances"] if r["node"] == "node3"]
    assert not [r for r in before if r["state"] == "healthy"], "needs node3 without a worker"
    graph = up.record()["graph_file"]
    joined = DynProcess(
        "join",
        graph,
        "worker",
        "--node",
        "node3",
        log_path=up.log_path.with_name("join.log"),
        state=up.state,
        command=on_node(node3),
    )
    try:
        deadline = time.monotonic() + 30
        ends: set[str] = set()
        while time.monotonic() < deadline and "node3" not in ends:
            ends |= {up.generate(f"j{i}").json()["text"].rsplit("_", 1)[1] for i in range(4)}
            time.sleep(0.1)
        assert "node3" in ends, "the hand-started worker got no request"
        rows = [r for r in up.status()["instances"] if r["node"] == "node3"]
        assert any(r["state"] == "healthy" and r["replica"] == 100 for r in rows)
    finally:
        joined.stop(signal.SIGTERM, timeout=30)
    assert joined.returncode == 0, joined.log()


def test_ctrl_c_leaves_no_process_on_any_node(up: Up) -> None:
    assert up.stop() == 0, up.output()
    deadline = time.monotonic() + 10
    left: dict[str, set[int]] = {}
    while time.monotonic() < deadline:
        left = {n.name: _dyn_processes(n, up.cluster) for n in up.cluster.nodes}
        if not any(left.values()):
            break
        time.sleep(0.1)
    assert not any(left.values()), f"left behind: {left}\n{up.output()}"
    # Remote output came back through ssh, prefixed node/role, and into the run's logs.
    output = up.output()
    assert re.search(r"^node1/frontend +\| .*listening on http://", output, re.M), output
    logs = Path(up.env["DYN_STATE_DIR"]) / "runs" / up.record()["run_id"] / "logs"
    assert "listening on" in (logs / "frontend.log").read_text()
    # Every role removed its pidfile, and the last one the run's folder of them.
    assert not (Path.home() / ".local/state/dyn/pids" / up.record()["run_id"]).exists()


def _dyn_processes(node: Any, cluster: Cluster) -> set[int]:
    """The processes on a node that are not its sshd listener."""
    if node.netns:
        return set(node.pids())
    # Loopback: every node shares this namespace; look for this run's role processes.
    out = subprocess.run(["pgrep", "-f", "dyn _role -"], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def test_unreachable_node_and_missing_dyn_fail_naming_the_node(
    cluster: Cluster, tmp_path: Path
) -> None:
    fake = tmp_path / "python-without-dyn"
    fake.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'dyn'\" >&2\nexit 1\n")
    fake.chmod(0o755)
    old = tmp_path / "python-old-dyn"
    old.write_text('#!/bin/sh\necho "dyn-version 0.0.1"\n')
    old.chmod(0o755)
    graph = write_graph(
        cluster,
        tmp_path / "bad.yaml",
        nodes__node2__python=str(fake),
        nodes__node3__python=str(old),
    )
    doc = yaml.safe_load(graph.read_text())
    doc["nodes"]["node1"]["port"] = free_port()  # nothing listens there: refused
    doc["nodes"]["node1"]["host"] = "127.0.0.1"
    graph.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "DYN_STATE_DIR": str(tmp_path / "state")}
    began = time.monotonic()
    out = subprocess.run(
        [*on_node(cluster.nodes[0]), "up", str(graph)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stderr
    assert "3 node(s) cannot run roles" in out.stderr
    assert "node 'node1': cannot connect over ssh" in out.stderr
    assert "Connection refused" in out.stderr
    assert "node 'node2': dyn is not installed" in out.stderr
    assert "node 'node3': runs dyn 0.0.1, but this machine runs dyn" in out.stderr
    assert "Traceback" not in out.stderr
    assert time.monotonic() - began < 30


def test_dyn_down_cleans_up_after_a_killed_dyn_up(cluster: Cluster, tmp_path: Path) -> None:
    """kill -9 of `dyn up` leaves etcd (its own session) and possibly roles behind;
    `dyn down` stops them through the record, pidfiles and ssh."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    up = Up(cluster, write_graph(cluster, state_dir / "multinode.yaml", offset=1), state_dir)
    record = up.record()
    up.kill()  # SIGKILL; `ip netns exec` execs dyn up: same pid
    node1 = cluster.nodes[0]
    down = node1.run([DYN, "down"], env=up.env, timeout=120)
    assert down.returncode == 0, down.stderr
    assert f"stopped the run's etcd (pid {record['etcd_pid']})" in down.stdout
    deadline = time.monotonic() + 15
    left: dict[str, set[int]] = {}
    while time.monotonic() < deadline:
        left = {n.name: _dyn_processes(n, cluster) for n in cluster.nodes}
        if not any(left.values()):
            break
        time.sleep(0.1)
    assert not any(left.values()), f"left behind: {left}\n{down.stdout}"
    pidfiles = (Path.home() / ".local/state/dyn/pids" / record["run_id"]).glob("*.pid")
    assert list(pidfiles) == []


def test_the_graph_runs_over_grpc_too(cluster: Cluster, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    graph = write_graph(cluster, state_dir / "multinode.yaml", offset=2, transport="grpc")
    up = Up(cluster, graph, state_dir)
    try:
        ends = {up.generate(f"g{i}").json()["text"].rsplit("_", 1)[1] for i in range(6)}
        assert ends == {"node2", "node3"}
    finally:
        assert up.stop() == 0, up.output()
