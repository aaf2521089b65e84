"""`dyn down` after `dyn up` and its roles were killed: it removes the run's own etcd
registrations (they would otherwise linger for a TTL) and nothing else."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from _dyn_graph import ROOT, DynUp, free_port
from _etcd_server import ETCD, running_etcd

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _keys(url: str, prefix: str) -> list[str]:
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    body = {"key": _b64(prefix), "range_end": _b64(end), "keys_only": True}
    kvs = httpx.post(f"{url}/v3/kv/range", json=body).json().get("kvs", [])
    return sorted(base64.b64decode(kv["key"]).decode() for kv in kvs)


@pytest.mark.skipif(ETCD is None, reason="etcd is not installed (etcd-server)")
def test_down_removes_only_the_runs_registrations(tmp_path: Path) -> None:
    with running_etcd(tmp_path / "etcd") as url:
        doc = yaml.safe_load((ROOT / "graphs" / "hello_world.yaml").read_text())
        doc["transport"] = "tcp"
        doc["discovery"] = {"backend": "etcd", "ttl_s": 60, "options": {"endpoints": url}}
        graph = tmp_path / "hello.yaml"
        graph.write_text(yaml.safe_dump(doc))
        # Someone else's worker in the same namespace (a `dyn join`, another run).
        lease = httpx.post(f"{url}/v3/lease/grant", json={"TTL": 60}).json()["ID"]
        foreign = "/dyn/hello/backend/generate/someone-else"
        httpx.post(f"{url}/v3/kv/put", json={"key": _b64(foreign), "value": "", "lease": lease})

        env = {**os.environ, "DYN_STATE_DIR": str(tmp_path / "state")}
        up = DynUp(str(graph), state=tmp_path / "state", log_path=tmp_path / "up.log")
        deadline = time.monotonic() + 30
        record: dict[str, object] = {}
        while not record.get("roles"):
            assert up.returncode is None
            assert time.monotonic() < deadline
            found = list((tmp_path / "state").glob("runs/*/run.json"))
            record = json.loads(found[0].read_text()) if found else {}
            time.sleep(0.1)
        ours = set(_keys(url, "/dyn/hello/")) - {foreign}
        assert ours, "the run registered nothing"
        # A crash of everything, roles first (they would deregister on noticing that
        # dyn up is gone), so no lease is revoked.
        roles = record["roles"]
        assert isinstance(roles, list)
        for role in roles:
            os.killpg(role["pid"], signal.SIGKILL)
        up.kill()

        down = subprocess.run(
            [sys.executable, "-m", "dyn", "down"], env=env, capture_output=True, text=True
        )
        assert down.returncode == 0, down.stderr
        assert f"removed {len(ours)} etcd entr" in down.stdout
        assert _keys(url, "/dyn/hello/") == [foreign]


@pytest.mark.skipif(ETCD is None, reason="etcd is not installed (etcd-server)")
def test_a_killed_up_leaves_its_etcd_orphaned_until_down(tmp_path: Path) -> None:
    """`dyn up` started etcd (data in the run's folder) and was killed: the etcd still runs,
    so the run is orphaned, `dyn runs prune` keeps its folder, and `dyn down` stops it."""
    doc = yaml.safe_load((ROOT / "graphs" / "hello_world.yaml").read_text())
    doc["transport"] = "tcp"
    endpoint = f"http://127.0.0.1:{free_port()}"
    doc["discovery"] = {"backend": "etcd", "options": {"endpoints": endpoint, "start": True}}
    graph = tmp_path / "hello.yaml"
    graph.write_text(yaml.safe_dump(doc))
    state = tmp_path / "state"
    env = {**os.environ, "DYN_STATE_DIR": str(state), "COLUMNS": "200"}

    def dyn(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dyn", *args], env=env, capture_output=True, text=True
        )

    def run_state() -> tuple[str, str]:
        (run,) = json.loads(dyn("runs", "--json").stdout)["runs"]
        return run["state"], run["reason"] or ""

    up = DynUp(str(graph), state=state, log_path=tmp_path / "up.log")
    etcd_pid = 0
    try:
        up.wait_serving(timeout=60)
        etcd_pid = up.record()["etcd_pid"]
        assert etcd_pid
        up.kill()  # SIGKILL: dyn up cannot stop its etcd
        assert httpx.get(f"{endpoint}/health", timeout=5).status_code == 200
        got = run_state()
        assert got[0] == "orphaned", got
        assert f"its etcd (pid {etcd_pid}) still runs" in got[1]
        assert dyn("runs", "prune").stdout.strip() == "nothing to prune: no stopped or failed runs"
        (run_dir,) = (state / "runs").iterdir()
        assert (run_dir / "etcd").is_dir()

        down = dyn("down")
        assert f"stopped the run's etcd (pid {etcd_pid})" in down.stdout, down.stderr
        assert run_state()[0] == "stopped"
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{endpoint}/health", timeout=2)
    finally:
        up.kill()
        if etcd_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(etcd_pid, signal.SIGKILL)
