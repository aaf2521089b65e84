"""A real etcd on loopback ports for tests (Debian's etcd-server)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from _dyn_graph import free_port

ETCD = shutil.which("etcd")


@contextmanager
def running_etcd(data: Path) -> Iterator[str]:
    """Start etcd with its data in ``data``; yield its client URL; stop it after."""
    assert ETCD is not None, "etcd is not installed (apt-get install etcd-server)"
    client, peer = free_port(), free_port()
    url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    data.mkdir(parents=True, exist_ok=True)
    with (data / "etcd.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                ETCD,
                "--data-dir",
                str(data / "data"),
                "--listen-client-urls",
                url,
                "--advertise-client-urls",
                url,
                "--listen-peer-urls",
                peer_url,
                "--initial-advertise-peer-urls",
                peer_url,
                "--initial-cluster",
                f"default={peer_url}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).json().get("health") == "true":
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((data / "etcd.log").read_text()[-2000:])
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
