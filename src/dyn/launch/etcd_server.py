"""A local etcd that `dyn up` starts for a graph whose discovery asks for one.

``discovery: {backend: etcd, options: {endpoints: URL, start: true}}`` makes `dyn up`
run ``etcd`` on this machine, listening for clients at the first endpoint, with its data
in the run's folder. It starts before the first role and stops after the last. Its
heartbeat is shortened so that leases as short as 1 s are honoured (etcd's smallest
lease is 1.5 election timeouts' worth of heartbeats).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from urllib.parse import urlsplit

import anyio
import httpx
from anyio.abc import Process

from dyn import state
from dyn.errors import LaunchError
from dyn.graph import GraphSpec
from dyn.launch._server_logs import log_tail
from dyn.net import free_port

__all__ = ["LocalEtcd", "start_local_etcd", "wants_local_etcd"]

# How long etcd may take to answer its first request.
START_TIMEOUT_S = 20.0
STOP_GRACE_S = 10.0
HEARTBEAT_MS = 50
ELECTION_TIMEOUT_MS = 500


def wants_local_etcd(graph: GraphSpec) -> bool:
    return graph.discovery.backend == "etcd" and bool(graph.discovery.options.get("start"))


def client_url(graph: GraphSpec) -> str:
    endpoints = graph.discovery.options.get("endpoints", "http://127.0.0.1:2379")
    if isinstance(endpoints, str):
        endpoints = endpoints.split(",")
    return str(endpoints[0]).strip().rstrip("/")


class LocalEtcd:
    def __init__(self, process: Process, url: str, log_path: str) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(STOP_GRACE_S):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
        await self.process.wait()


async def start_local_etcd(
    graph: GraphSpec, run: state.RunDir, record: state.RunRecord
) -> LocalEtcd | None:
    """Start etcd if the graph asks for it; wait until it answers; note it in the record."""
    if not wants_local_etcd(graph):
        return None
    binary = shutil.which("etcd")
    if binary is None:
        raise LaunchError(
            "the graph asks dyn up to start etcd (discovery.options.start), but there is no "
            "etcd on PATH; install it (Debian: apt-get install etcd-server) or start etcd "
            "yourself and remove 'start: true'"
        )
    url = client_url(graph)
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 2379
    if await _answers(url):
        raise LaunchError(
            f"an etcd already answers at {url}; remove 'start: true' from the graph's "
            "discovery options to use it, or stop it"
        )
    peer = f"http://127.0.0.1:{free_port()}"
    log_path = run.log_path("etcd")
    command = [
        binary,
        "--name=dyn",
        f"--data-dir={run.path / 'etcd'}",
        f"--listen-client-urls={parts.scheme}://{host}:{port}",
        f"--advertise-client-urls={url}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=dyn={peer}",
        f"--heartbeat-interval={HEARTBEAT_MS}",
        f"--election-timeout={ELECTION_TIMEOUT_MS}",
    ]
    with log_path.open("ab") as log:
        process = await anyio.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # Ctrl-C reaches dyn up, which stops etcd last
        )
    etcd = LocalEtcd(process, url, str(log_path))
    deadline = time.monotonic() + START_TIMEOUT_S
    while not await _answers(url):
        if process.returncode is not None or time.monotonic() > deadline:
            await etcd.stop()
            detail = log_tail(log_path)
            raise LaunchError(
                f"etcd did not start at {url} (is {host} an address of this machine?); "
                f"its last log lines:\n{detail}"
            )
        await anyio.sleep(0.1)
    record.etcd_pid = process.pid
    state.write_record(run, record)
    return etcd


async def _answers(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            response = await client.post(f"{url}/v3/kv/range", json={"key": "AA=="})
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def stop_recorded_etcd(pid: int) -> bool:
    """Stop the etcd a killed `dyn up` left behind (for `dyn down`)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"etcd" not in f.read().split(b"\0")[0]:
                return False
        os.kill(pid, signal.SIGTERM)
    except (OSError, ProcessLookupError):
        return False
    return True
