"""How long moving KV blocks from a prefill worker to a decode worker takes.

``latency + blocks × bytes_per_block / bandwidth``, divided by the same ``speedup_ratio``
as the engines so that a sped-up graph keeps the ratio of transfer to compute time.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["KvTransferModel"]

# Llama-3-8B in bf16: 2 (K and V) × 32 layers × 8 KV heads × 128 dims × 2 bytes = 128 KiB
# per token; a 16-token block is 2 MiB. NIXL over RDMA sustains tens of Gb/s per GPU.
DEFAULT_BYTES_PER_BLOCK = 2 * 1024 * 1024
DEFAULT_BANDWIDTH_GBPS = 25.0
DEFAULT_LATENCY_MS = 1.0


class KvTransferModel(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``kv_transfer: {bandwidth_gbps, latency_ms, bytes_per_block}`` in a graph."""

    bandwidth_gbps: Annotated[float, msgspec.Meta(gt=0)] = DEFAULT_BANDWIDTH_GBPS
    latency_ms: Annotated[float, msgspec.Meta(ge=0)] = DEFAULT_LATENCY_MS
    bytes_per_block: Annotated[int, msgspec.Meta(ge=0)] = DEFAULT_BYTES_PER_BLOCK

    def seconds(self, blocks: int, speedup_ratio: float = 1.0) -> float:
        """Transfer time of ``blocks`` blocks (gigabits: 10⁹ bits per second)."""
        wire_s = blocks * self.bytes_per_block * 8 / (self.bandwidth_gbps * 1e9)
        return (self.latency_ms / 1000.0 + wire_s) / speedup_ratio
