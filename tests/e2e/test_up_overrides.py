"""`dyn up --discovery BACKEND` drops the graph's options of another backend, in one
note, and the graph then runs; in-process, `dyn status` shows the graph's node names."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from _dyn_graph import DynUp, status_json
from _multinode_copy import multinode_copy

pytestmark = pytest.mark.e2e


def generate(url: str) -> str:
    response = httpx.post(f"{url}/generate", json={"prompt": "hi", "request_id": "r1"}, timeout=10)
    assert response.status_code == 200, response.text
    text: str = response.json()["text"]
    return text


@pytest.mark.parametrize(
    ("backend", "launcher"), [("file", "local"), ("memory", "inprocess"), ("memory", "local")]
)
def test_discovery_override_drops_the_other_backends_options(
    tmp_path: Path, backend: str, launcher: str
) -> None:
    graph = multinode_copy(tmp_path / "multinode.yaml")  # etcd: endpoints, start
    up = DynUp(
        str(graph),
        "--launcher",
        launcher,
        "--discovery",
        backend,
        state=tmp_path / "state",
        log_path=tmp_path / "up.log",
    )
    try:
        up.wait_healthy(timeout=60)
        assert generate(up.url).startswith("hi_ProcessedBy_node1_GeneratedBy_node")
        err = up.log()
        assert (
            f"note: --discovery {backend} drops the etcd option(s) endpoints, start of {graph}"
            in err
        )
        assert "unknown" not in err
        nodes = {row["role"]: row["node"] for row in status_json(up)["instances"]}
        assert nodes == {
            "frontend": "node1",
            "processor": "node1",
            "worker[0]": "node2",
            "worker[1]": "node3",
        }
    finally:
        up.stop()
