"""KV-cache-aware routing: the radix index, the cost function, in-flight tracking, replica
sync, and the ``kv`` and ``kv_approx`` strategies built on them."""

from __future__ import annotations

from dyn.routing.kv.approx import KvApproxRouter
from dyn.routing.kv.indexer import RadixIndex, chain_keys
from dyn.routing.kv.router import KvRouter
from dyn.routing.kv.sync import ReplicaSync
from dyn.routing.kv.tracker import LoadTracker

__all__ = ["KvApproxRouter", "KvRouter", "LoadTracker", "RadixIndex", "ReplicaSync", "chain_keys"]
