"""What every worker serves (simulated, proxy and decode workers alike)."""

from __future__ import annotations

import msgspec

from dyn.contracts.base import Empty, EndpointRef
from dyn.engines.base import EngineOutput, EngineRequest, TokenUsage
from dyn.kv.events import WorkerUpdate

__all__ = [
    "ENGINE_CLEAR_KV",
    "ENGINE_GENERATE",
    "ENGINE_KV_EVENTS",
    "ClearKvReply",
    "EngineOutput",
    "EngineRequest",
    "TokenUsage",
    "WorkerUpdate",
]


class ClearKvReply(msgspec.Struct, frozen=True):
    cleared_blocks: int


ENGINE_GENERATE = EndpointRef("generate", EngineRequest, EngineOutput)
# A snapshot of the cache first, then events and load as they happen.
ENGINE_KV_EVENTS = EndpointRef("kv_events", Empty, WorkerUpdate)
ENGINE_CLEAR_KV = EndpointRef("clear_kv", Empty, ClearKvReply)
