"""What the prefill queue serves, and what a decode worker adds to the worker's contract.

A decode worker pushes a :class:`PrefillJob`; a prefill worker pulls it as a
:class:`LeasedJob`, computes it, and delivers the blocks' hashes to the decode worker's
``kv_transfer``. ``set_disagg`` changes the thresholds while serving.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from dyn.contracts.base import Empty, EndpointRef

__all__ = [
    "DECODE_KV_TRANSFER",
    "DECODE_SET_DISAGG",
    "QUEUE_ACK",
    "QUEUE_DEPTH",
    "QUEUE_NACK",
    "QUEUE_PULL",
    "QUEUE_PUSH",
    "QUEUE_SET_DISAGG",
    "QUEUE_TOUCH",
    "Acked",
    "DisaggSettings",
    "DisaggThresholds",
    "JobRef",
    "KvTransfer",
    "KvTransferReply",
    "LeaseState",
    "LeasedJob",
    "Nacked",
    "PrefillJob",
    "PullRequest",
    "Pushed",
    "QueueDepth",
]

NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class PrefillJob(msgspec.Struct, frozen=True):
    """What a decode worker pushes: the prompt, its blocks, and who waits for them."""

    request_id: str
    tokens: list[int]
    block_hashes: list[int]
    block_size: int
    decode_instance_id: str


class Pushed(msgspec.Struct, frozen=True):
    job_id: str
    depth: int


class PullRequest(msgspec.Struct, frozen=True):
    wait_s: float = 5.0


class LeasedJob(msgspec.Struct, frozen=True):
    """A job handed to one puller until ``lease_s`` from now (renew with ``touch``)."""

    job_id: str
    payload: PrefillJob
    delivery: int
    lease_s: float


class JobRef(msgspec.Struct, frozen=True):
    job_id: str


class Acked(msgspec.Struct, frozen=True):
    acked: bool


class LeaseState(msgspec.Struct, frozen=True):
    leased: bool


class Nacked(msgspec.Struct, frozen=True):
    nacked: bool


class QueueDepth(msgspec.Struct, frozen=True):
    depth: int
    ready: int
    leased: int
    # Thresholds set while serving; unset ones leave each decode worker's own config.
    disagg: dict[str, int]


class DisaggSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Thresholds to change; a field left out (or None) keeps its value."""

    max_local_prefill_length: NonNegative | None = None
    max_prefill_queue_size: NonNegative | None = None

    def given(self) -> dict[str, int]:
        """The thresholds this request sets."""
        return {k: v for k, v in msgspec.structs.asdict(self).items() if v is not None}


class DisaggThresholds(msgspec.Struct, frozen=True):
    max_local_prefill_length: int
    max_prefill_queue_size: int


class KvTransfer(msgspec.Struct, frozen=True):
    """A prefill worker's delivery: the hashes of the blocks it computed."""

    request_id: str
    block_hashes: list[int] = msgspec.field(default_factory=list)


class KvTransferReply(msgspec.Struct, frozen=True, omit_defaults=True):
    accepted: bool
    reason: str | None = None
    blocks: int | None = None


QUEUE_PUSH = EndpointRef("push", PrefillJob, Pushed)
QUEUE_PULL = EndpointRef("pull", PullRequest, LeasedJob)
QUEUE_ACK = EndpointRef("ack", JobRef, Acked)
QUEUE_TOUCH = EndpointRef("touch", JobRef, LeaseState)
QUEUE_NACK = EndpointRef("nack", JobRef, Nacked)
QUEUE_DEPTH = EndpointRef("depth", Empty, QueueDepth)
# The reply is every threshold set at the queue so far.
QUEUE_SET_DISAGG = EndpointRef("set_disagg", DisaggSettings, DisaggSettings)
DECODE_KV_TRANSFER = EndpointRef("kv_transfer", KvTransfer, KvTransferReply)
DECODE_SET_DISAGG = EndpointRef("set_disagg", DisaggSettings, DisaggThresholds)
