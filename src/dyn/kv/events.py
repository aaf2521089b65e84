"""What a worker tells routers about its KV cache: block events and load.

Workers publish these on their ``kv_events`` endpoint, a snapshot first whenever a
subscriber (re)connects, so a restarted router rebuilds its index without a broker.
Event ids increase by one per event on a worker; a gap means events were lost and the
subscriber should resubscribe to get a fresh snapshot.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "KvCleared",
    "KvEvent",
    "KvRemoved",
    "KvStored",
    "StoredBlock",
    "WorkerLoad",
    "WorkerUpdate",
]


class StoredBlock(msgspec.Struct, frozen=True, array_like=True):
    """One newly cached block: its sequence hash and its local (tokens) hash."""

    block_hash: int
    tokens_hash: int


class KvStored(msgspec.Struct, frozen=True, tag="stored"):
    """Blocks now cached, in prefix order, following ``parent_hash`` (None: from root)."""

    blocks: list[StoredBlock]
    parent_hash: int | None = None


class KvRemoved(msgspec.Struct, frozen=True, tag="removed"):
    """Blocks evicted, by sequence hash."""

    block_hashes: list[int]


class KvCleared(msgspec.Struct, frozen=True, tag="cleared"):
    """Every block was dropped."""


class KvEvent(msgspec.Struct, frozen=True):
    event_id: int
    data: KvStored | KvRemoved | KvCleared


class WorkerLoad(msgspec.Struct, frozen=True, tag="load"):
    """A worker's load, as a router weighs it."""

    active_blocks: int
    total_blocks: int
    waiting: int
    running: int
    prefix_hit_rate: float  # cached prompt tokens / prompt tokens, since start (0-1)


class WorkerUpdate(msgspec.Struct, frozen=True):
    """One item on a worker's ``kv_events`` stream: events and/or the current load.

    ``snapshot`` is true on the first item after (re)subscribing: its ``events`` then
    describe the whole cache (one ``KvCleared`` followed by ``KvStored`` events).
    """

    events: list[KvEvent] = msgspec.field(default_factory=list)
    load: WorkerLoad | None = None
    snapshot: bool = False
