"""Discovery inside one process: a dict and a change signal."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio

from dyn.discovery.base import Discovery, Instance

__all__ = ["MemoryDiscovery"]


class MemoryDiscovery(Discovery):
    def __init__(self, *, ttl_s: float = 10.0, **_options: object) -> None:
        # No lease to keep: everything registered here dies with the process.
        self._instances: dict[str, Instance] = {}
        self._changed = anyio.Event()

    def _signal(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def register(self, instance: Instance) -> None:
        self._instances[instance.key] = instance
        self._signal()

    async def deregister(self, instance: Instance) -> None:
        if self._instances.pop(instance.key, None) is not None:
            self._signal()

    async def snapshot(self, prefix: str) -> list[Instance]:
        return self._snapshot(prefix)

    def _snapshot(self, prefix: str) -> list[Instance]:
        return [self._instances[k] for k in sorted(self._instances) if k.startswith(prefix)]

    async def watch(self, prefix: str) -> AsyncIterator[list[Instance]]:
        last: list[Instance] | None = None
        while True:
            changed = self._changed
            current = self._snapshot(prefix)
            if current != last:
                last = current
                yield current
            await changed.wait()
