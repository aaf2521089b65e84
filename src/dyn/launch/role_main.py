"""The body of one role process, as the local and ssh launchers start it.

``dyn _role GRAPH COMPONENT REPLICA`` loads the resolved graph the launcher wrote, serves
that one role instance, prints a ready line the launcher waits for, and on SIGTERM,
SIGINT or its stdin closing (the launcher died) drains and exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio

from dyn.graph import GraphSpec, load_graph
from dyn.launch._roles import make_discovery, make_transport, start_role, stop_role
from dyn.launch.base import cancel_when_set
from dyn.runtime.runtime import Runtime

__all__ = ["READY_MARK", "run_role"]

# The line a role prints on stdout once it serves; the launcher parses the JSON after it.
READY_MARK = "dyn-role-ready "


def run_role(graph_path: Path, component: str, replica: int, *, watch_stdin: bool) -> None:
    graph = load_graph(graph_path)
    anyio.run(_serve, graph, component, replica, watch_stdin)


async def _serve(graph: GraphSpec, component_name: str, replica: int, watch_stdin: bool) -> None:
    spec = graph.component(component_name)
    node = graph.node(spec.placement[replica % len(spec.placement)]) if spec.placement else None
    host = node.bind if node is not None else "127.0.0.1"
    stop = anyio.Event()
    async with (
        make_discovery(graph) as discovery,
        Runtime(
            namespace=graph.namespace,
            transport=make_transport(graph),
            discovery=discovery,
            node=node.name if node is not None else "local",
            host=host,
        ) as runtime,
    ):
        runtime.tasks.start_soon(_watch_signals, stop)
        if watch_stdin:
            runtime.tasks.start_soon(_watch_stdin, stop)
        with anyio.CancelScope() as startup:  # SIGTERM during start-up: just leave
            runtime.tasks.start_soon(cancel_when_set, stop, startup)
            component = await start_role(runtime, graph, spec, replica)
        if startup.cancelled_caught:
            return
        ready: dict[str, Any] = {
            "pid": os.getpid(),
            "address": runtime.address,
            "instance_id": component.info.instance_id,
            "url": getattr(component, "url", None),
        }
        sys.stdout.write(READY_MARK + json.dumps(ready) + "\n")
        sys.stdout.flush()
        await stop.wait()
        with anyio.CancelScope(shield=True):
            await stop_role(runtime, component)


async def _watch_signals(stop: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()


async def _watch_stdin(stop: anyio.Event) -> None:
    # The launcher holds our stdin open; EOF means it is gone, so nobody would stop us.
    # Wait on the event loop rather than in a thread, so shutdown never waits on a read.
    fd = sys.stdin.fileno()
    while True:
        await anyio.wait_readable(fd)
        if not os.read(fd, 4096):
            break
    stop.set()
