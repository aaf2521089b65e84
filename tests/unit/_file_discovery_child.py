"""Registers one instance in a file discovery directory, says "ready", then waits to die.

Usage: python _file_discovery_child.py <dir> <ttl_s> <instance_id>
"""

from __future__ import annotations

import sys

import anyio

from dyn.discovery.base import Instance
from dyn.discovery.file import FileDiscovery


async def main(path: str, ttl_s: float, instance_id: str) -> None:
    async with FileDiscovery(path=path, ttl_s=ttl_s) as discovery:
        instance = Instance(
            namespace="ns",
            component="child",
            endpoint="generate",
            instance_id=instance_id,
            address="127.0.0.1:1",
            transport="tcp",
        )
        await discovery.register(instance)
        print("ready", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], float(sys.argv[2]), sys.argv[3])
