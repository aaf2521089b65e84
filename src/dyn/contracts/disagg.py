"""What the prefill queue serves, and what a decode worker adds to the worker's contract.

A decode worker pushes a :class:`PrefillJob`; a prefill worker pulls it as a
:class:`LeasedJob`, computes it, and delivers the blocks' hashes to the decode worker's
``kv_transfer``. ``set_disagg`` changes the thresholds while serving.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from dyn.contracts.base import EndpointRef

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
    "DepthRequest",
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


class DisaggThresholds(msgspec.Struct, frozen=True):
    max_local_prefill_length: int
    max_prefill_queue_size: int


class DepthRequest(msgspec.Struct, frozen=True):
    """Asks for the queue's state. A decode worker names itself and the thresholds of its
    own config, so the queue can show what each decode worker applies; an operator's
    ``{}`` leaves both unset."""

    instance_id: str | None = None
    configured: DisaggThresholds | None = None


class QueueDepth(msgspec.Struct, frozen=True):
    """The queue's state: what a decode worker needs per request (``depth``,
    ``overrides``) and what an operator wants to see (the rest)."""

    depth: int
    ready: int
    leased: int
    # Thresholds set while serving (set_disagg); each decode worker applies them over
    # its own config.
    overrides: dict[str, int]
    # What the decode workers apply now: the overrides over each one's config. A
    # threshold on which they differ is left out here; decode_workers shows each one's.
    thresholds: dict[str, int] = msgspec.field(default_factory=dict)
    decode_workers: dict[str, DisaggThresholds] = msgspec.field(default_factory=dict)
    max_size: int = 0
    visibility_timeout_s: float = 0.0
    max_deliveries: int = 0
    redelivered_total: int = 0
    dropped_total: int = 0


class DisaggSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Thresholds to change; a field left out (or None) keeps its value."""

    max_local_prefill_length: NonNegative | None = None
    max_prefill_queue_size: NonNegative | None = None

    def given(self) -> dict[str, int]:
        """The thresholds this request sets."""
        return {k: v for k, v in msgspec.structs.asdict(self).items() if v is not None}


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
QUEUE_DEPTH = EndpointRef("depth", DepthRequest, QueueDepth)
# The reply is the queue's whole state, with the thresholds now in force.
QUEUE_SET_DISAGG = EndpointRef("set_disagg", DisaggSettings, QueueDepth)
DECODE_KV_TRANSFER = EndpointRef("kv_transfer", KvTransfer, KvTransferReply)
DECODE_SET_DISAGG = EndpointRef("set_disagg", DisaggSettings, DisaggThresholds)
