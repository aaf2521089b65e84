"""`dyn down` after `dyn up` and its roles were killed: it removes the run's own etcd
registrations (they would otherwise linger for a TTL) and nothing else."""

from __future__ import annotations

import base64
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
from _dyn_graph import ROOT, DynUp
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
