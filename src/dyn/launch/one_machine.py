"""`dyn up --local`: a graph that places roles on nodes, tried on this one machine.

Each node of the graph gets a loopback address of its own, in the order the graph lists
them: the first 127.0.0.1, the next 127.0.0.2, and so on (Linux routes all of 127/8 to
the loopback interface, so every one of them can be bound without configuration). Its
roles run as local processes bound to that address, under their node's name, so `dyn
status` reads as it would on the real machines. Discovery moves to loopback too: a
graph that uses etcd gets one that `dyn up` starts on 127.0.0.1 when ``etcd`` is
installed, and file discovery in the run's folder otherwise.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import shutil
from types import MappingProxyType

import msgspec

from dyn.errors import LaunchError
from dyn.graph import GraphSpec, NodeSpec
from dyn.net import free_port, is_loopback

__all__ = ["LOOPBACK_BASE", "loopback_address", "on_this_machine"]

# The first node's address; node i (from 0) gets this plus i.
LOOPBACK_BASE = ipaddress.IPv4Address("127.0.0.1")
# 127.0.0.1 .. 127.0.0.254 stay clear of the network and broadcast-looking addresses.
MAX_NODES = 254


def loopback_address(index: int) -> str:
    """The loopback address of the graph's ``index``-th node (from 0)."""
    return str(LOOPBACK_BASE + index)


def on_this_machine(graph: GraphSpec) -> tuple[GraphSpec, str]:
    """The graph with every node on a loopback address and discovery on loopback, and
    one line saying which discovery it uses."""
    if len(graph.nodes) > MAX_NODES:
        raise LaunchError(
            f"--local gives each node a loopback address; {len(graph.nodes)} nodes are more "
            f"than the {MAX_NODES} it has"
        )
    addresses = {node.name: loopback_address(i) for i, node in enumerate(graph.nodes)}
    nodes = tuple(_on_loopback(node, addresses[node.name]) for node in graph.nodes)
    components = []
    for spec in graph.components:
        host = getattr(spec.config, "host", None)
        if isinstance(host, str) and spec.placement and not _stays(host):
            # A listener bound to one of the real machines' addresses: its node's instead.
            config = msgspec.structs.replace(spec.config, host=addresses[spec.placement[0]])
            spec = dataclasses.replace(spec, config=config)
        components.append(spec)
    graph = dataclasses.replace(graph, nodes=nodes, components=tuple(components))
    where = ", ".join(f"{name} on {address}" for name, address in addresses.items())
    graph, discovery = _discovery_on_loopback(graph)
    return graph, f"--local: {where or 'every role here'}; {discovery}"


def _on_loopback(node: NodeSpec, address: str) -> NodeSpec:
    return dataclasses.replace(node, host=address, bind=address)


def _stays(host: str) -> bool:
    """Whether a listener's host works here as it is: loopback or every address."""
    return is_loopback(host) or host in ("", "0.0.0.0", "::")


def _discovery_on_loopback(graph: GraphSpec) -> tuple[GraphSpec, str]:
    discovery = graph.discovery
    if discovery.backend != "etcd":
        # In-memory discovery cannot cross processes: the local launcher makes it file.
        backend = "file" if discovery.backend == "memory" else discovery.backend
        return graph, f"{backend} discovery"
    if shutil.which("etcd") is None:
        changed = dataclasses.replace(discovery, backend="file", options=MappingProxyType({}))
        note = "file discovery in the run's folder (etcd is not installed)"
        return dataclasses.replace(graph, discovery=changed), note
    url = f"http://127.0.0.1:{free_port()}"
    options = {**dict(discovery.options), "endpoints": url, "start": True}
    changed = dataclasses.replace(discovery, options=MappingProxyType(options))
    return dataclasses.replace(graph, discovery=changed), f"etcd, started here at {url}"
