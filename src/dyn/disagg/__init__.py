"""Disaggregated prefill/decode: the pure pieces (the rule, the transfer-time model and
the prefill queue's bookkeeping). The roles that serve them live in :mod:`dyn.roles`."""

from __future__ import annotations

from dyn.disagg.queue import Lease, PrefillQueue, QueueFull
from dyn.disagg.rule import DisaggRule, uncached_tokens
from dyn.disagg.transfer import KvTransferModel

__all__ = ["DisaggRule", "KvTransferModel", "Lease", "PrefillQueue", "QueueFull", "uncached_tokens"]
