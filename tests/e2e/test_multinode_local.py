"""`dyn up graphs/multinode.yaml --local`: the multi-node graph on one machine, each
node's roles on a loopback address of their own; and plain `dyn up` of it fails fast
on nodes that do not answer, suggesting --local."""

from __future__ import annotations

import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from _dyn_graph import DynUp, status_json
from _multinode_copy import MULTINODE, multinode_copy

pytestmark = pytest.mark.e2e

NODES = {
    "frontend": ("node1", "127.0.0.1"),
    "processor": ("node1", "127.0.0.1"),
    "worker[0]": ("node2", "127.0.0.2"),
    "worker[1]": ("node3", "127.0.0.3"),
}


def check_local_run(tmp_path: Path, env: dict[str, str] | None, discovery_note: str) -> None:
    up = DynUp(
        str(MULTINODE),
        "--local",
        state=tmp_path / "state",
        log_path=tmp_path / "up.log",
        env=env,
    )
    try:
        up.wait_healthy(timeout=90)
        response = httpx.post(
            f"{up.url}/generate", json={"prompt": "hello", "request_id": "r1"}, timeout=10
        )
        assert response.status_code == 200, response.text
        assert response.json()["text"] in (
            "hello_ProcessedBy_node1_GeneratedBy_node2",
            "hello_ProcessedBy_node1_GeneratedBy_node3",
        )
        err = up.log()
        assert (
            "--local: node1 on 127.0.0.1, node2 on 127.0.0.2, node3 on 127.0.0.3; " + discovery_note
        ) in err
        rows = {row["role"]: row for row in status_json(up)["instances"]}
        assert {role: (row["node"], row["host"]) for role, row in rows.items()} == NODES
        for role in ("processor", "worker[0]", "worker[1]"):  # their transport addresses
            assert rows[role]["address"].startswith(f"tcp://{NODES[role][1]}:"), rows[role]
    finally:
        assert up.stop() == 0


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd is not installed (etcd-server)")
def test_multinode_graph_runs_here_with_a_local_etcd(tmp_path: Path) -> None:
    check_local_run(tmp_path, None, "etcd, started here at http://127.0.0.1:")


def test_multinode_graph_runs_here_with_file_discovery_without_etcd(tmp_path: Path) -> None:
    # Nothing but this Python's own scripts on PATH: no etcd.
    env = {"PATH": str(Path(sys.executable).parent)}
    check_local_run(tmp_path, env, "file discovery in the run's folder (etcd is not installed)")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that takes no new connection, as an unreachable host: its
    listener's queue is full and never accepted, so a connect waits for an answer."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):  # fills the queue
            yield port


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_unreachable_nodes_fail_fast_suggesting_local(tmp_path: Path, silent_port: int) -> None:
    graph = multinode_copy(
        tmp_path / "multinode.yaml", binds=("127.0.0.1",) * 3, discovery={"backend": "file"}
    )
    doc = yaml.safe_load(graph.read_text())
    for node in doc["nodes"].values():
        node["port"] = silent_port  # where ssh would connect
    graph.write_text(yaml.safe_dump(doc))
    began = time.monotonic()
    up = DynUp(str(graph), state=tmp_path / "state", log_path=tmp_path / "up.log")
    try:
        assert up.wait(60) == 1
    finally:
        up.kill()
    elapsed = time.monotonic() - began
    err = up.log()
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "3 node(s) cannot run roles: node 'node1': 127.0.0.1:" in line
    assert "does not answer" in line
    assert line.endswith(f"to try the graph on this machine: dyn up {graph} --local")
    # ssh alone would wait its ConnectTimeout (5 s) first.
    assert elapsed < 4.5, elapsed


def test_in_process_status_shows_the_graphs_node_names(tmp_path: Path) -> None:
    graph = multinode_copy(tmp_path / "multinode.yaml", discovery={"backend": "memory"})
    up = DynUp(
        str(graph),
        "--launcher",
        "inprocess",
        state=tmp_path / "state",
        log_path=tmp_path / "up.log",
    )
    try:
        up.wait_healthy(timeout=60)
        nodes = {row["role"]: row["node"] for row in status_json(up)["instances"]}
        assert nodes == {role: node for role, (node, _) in NODES.items()}
    finally:
        up.stop()
