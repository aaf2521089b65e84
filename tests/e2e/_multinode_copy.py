"""Copies of graphs/multinode.yaml with their nodes on addresses of this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MULTINODE = ROOT / "graphs" / "multinode.yaml"

__all__ = ["MULTINODE", "multinode_copy"]


def multinode_copy(
    path: Path,
    binds: tuple[str, str, str] = ("127.0.0.1", "127.0.0.2", "127.0.0.3"),
    discovery: dict[str, Any] | None = None,
) -> Path:
    """graphs/multinode.yaml with node1..node3 at ``binds`` (host and bind), and
    ``discovery`` instead of its etcd section when given."""
    doc = yaml.safe_load(MULTINODE.read_text())
    for name, address in zip(("node1", "node2", "node3"), binds, strict=True):
        doc["nodes"][name].update(host=address, bind=address)
    if discovery is not None:
        doc["discovery"] = discovery
    path.write_text(yaml.safe_dump(doc))
    return path
