"""The discovery interface: who serves which endpoint, and where.

An instance is registered under ``{namespace}/{component}/{endpoint}/{instance_id}``.
Backends hold registrations under a lease that lapses when the process dies; a clean
shutdown deregisters at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Self

import msgspec

__all__ = ["Discovery", "Instance"]


class Instance(msgspec.Struct, frozen=True, kw_only=True):
    """One endpoint of one component instance, as discovery records it."""

    namespace: str
    component: str
    endpoint: str
    instance_id: str
    address: str
    transport: str
    node: str = "local"
    host: str = "127.0.0.1"
    pid: int = 0
    replica: int = 0
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.component}/{self.endpoint}/{self.instance_id}"


class Discovery(ABC):
    """A registry of live instances. Use it as an async context manager.

    Entering starts whatever the backend needs in the background (lease keep-alive,
    watchers); leaving deregisters everything this object registered.
    """

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    @abstractmethod
    async def register(self, instance: Instance) -> None:
        """Publish ``instance`` under its key, held by this process's lease.

        Raises:
            DiscoveryError: the backend cannot be reached.
        """

    @abstractmethod
    async def deregister(self, instance: Instance) -> None:
        """Remove ``instance`` at once. Removing an unknown instance is not an error."""

    @abstractmethod
    async def snapshot(self, prefix: str) -> list[Instance]:
        """Every live instance whose key starts with ``prefix``, sorted by key."""

    @abstractmethod
    def watch(self, prefix: str) -> AsyncIterator[list[Instance]]:
        """Yield the live instances under ``prefix`` now, then again after every change.

        The iterator runs until the caller stops consuming it or the backend closes.
        """
