"""A role started as on another node takes the cluster secret from its bootstrap line."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from dyn.errors import DynError, ProtocolError
from dyn.graph import dump_graph_yaml, load_graph
from dyn.launch.role_classes import role_class
from dyn.launch.role_main import READY_MARK
from dyn.settings import CLUSTER_SECRET_ENV, ROLE_SECRET_ENV
from dyn.transports.tcp import TcpTransport

pytestmark = [pytest.mark.timeout(60)]

HELLO = Path(__file__).resolve().parents[2] / "graphs" / "hello_world.yaml"
SECRET = "s3cret-from-the-launcher"


async def call(client: TcpTransport, address: str) -> None:
    with anyio.fail_after(10):
        async with client.call(address, "hello/backend/none/0", b"", {}) as items:
            async for _ in items:
                pass


async def check_the_secret_guards(address: str) -> None:
    stranger = TcpTransport()
    try:
        with pytest.raises(ProtocolError, match="requires a cluster secret"):
            await call(stranger, address)
    finally:
        await stranger.aclose()
    member = TcpTransport(cluster_secret=SECRET)
    try:
        # Past the handshake: the server answers the made-up path itself.
        with pytest.raises(DynError) as answered:
            await call(member, address)
        assert not isinstance(answered.value, ProtocolError), answered.value
    finally:
        await member.aclose()


def test_the_bootstrap_secret_guards_the_roles_transport() -> None:
    graph = dataclasses.replace(load_graph(HELLO, resolve_role=role_class), transport="tcp")
    # Nothing in this node's own environment: the secret can only come from stdin.
    env = {k: v for k, v in os.environ.items() if k not in ROLE_SECRET_ENV}
    boot = {"graph": dump_graph_yaml(graph), "env": {CLUSTER_SECRET_ENV: SECRET}}
    role = subprocess.Popen(
        [sys.executable, "-m", "dyn", "_role", "-", "backend", "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    assert role.stdin is not None
    assert role.stdout is not None
    try:
        role.stdin.write(json.dumps(boot) + "\n")
        role.stdin.flush()
        line = role.stdout.readline()
        assert line.startswith(READY_MARK), line
        anyio.run(check_the_secret_guards, json.loads(line[len(READY_MARK) :])["address"])
    finally:
        role.stdin.close()  # the role stops when its launcher's channel closes
        role.wait(timeout=30)
        role.stdout.close()
