"""`dyn up` starts etcd itself for a graph whose discovery says `start: true`, registers
the roles there, and stops it with the graph."""

from __future__ import annotations

import base64
import shutil
import socket
from pathlib import Path

import httpx
import pytest
import yaml
from _dyn_graph import ROOT, dyn_up, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd is not installed (etcd-server)")
@pytest.mark.parametrize("transport", ["inproc", "tcp"])
def test_dyn_up_starts_and_stops_its_own_etcd(tmp_path: Path, transport: str) -> None:
    etcd_port = free_port()
    endpoint = f"http://127.0.0.1:{etcd_port}"
    doc = yaml.safe_load((ROOT / "graphs" / "hello_world.yaml").read_text())
    doc["transport"] = transport
    doc["discovery"] = {
        "backend": "etcd",
        "ttl_s": 1,
        "options": {"endpoints": endpoint, "start": True, "prefix": "/t/"},
    }
    graph = tmp_path / "hello_etcd.yaml"
    graph.write_text(yaml.safe_dump(doc))
    port = free_port()
    with dyn_up(graph, port, tmp_path / "up.log"):
        answer = httpx.post(f"http://127.0.0.1:{port}/generate", json={"text": "hi"})
        assert answer.status_code == 200
        assert "Backend: hi-mid-back" in answer.text
        keys = httpx.post(
            f"{endpoint}/v3/kv/range",
            json={"key": base64.b64encode(b"/t/").decode(), "range_end": "L3Uv"},  # "/u/"
        ).json()
        names = {base64.b64decode(kv["key"]).decode() for kv in keys.get("kvs", [])}
        assert any("/backend/generate/" in name for name in names), names
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", etcd_port))  # etcd went with the graph
