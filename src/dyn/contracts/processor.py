"""What a processor (and the standalone router role) serves.

``generate`` speaks text in, text out: the messages the OpenAI layer sends and reads
(:mod:`dyn.openai` re-exports them, and imports them from here). The rest are the admin
endpoints ``dyn route`` and the frontend's admin routes call, and ``router_sync``
between replicas.
"""

from __future__ import annotations

from typing import Any

import msgspec

from dyn.contracts.base import Empty, EndpointRef
from dyn.engines.base import TokenUsage
from dyn.routing.kv.sync import SyncBatch

__all__ = [
    "PROCESSOR_CLEAR_KV",
    "PROCESSOR_EXPLAIN",
    "PROCESSOR_GENERATE",
    "PROCESSOR_ROUTE_DECISIONS",
    "PROCESSOR_ROUTE_INFO",
    "PROCESSOR_SET_STRATEGY",
    "ROUTER_BEST_WORKER",
    "ROUTER_SYNC",
    "BestWorker",
    "BestWorkerRequest",
    "ClearAllReply",
    "ExplainRequest",
    "Explanation",
    "GenerateOutput",
    "GenerateRequest",
    "OutputLogprob",
    "RouteDecisions",
    "RouteInfo",
    "StrategyReply",
    "StrategyRequest",
    "SyncApplied",
    "SyncBatch",
    "TokenUsage",
]


class GenerateRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One generation, text in (what the OpenAI frontend sends). The backend tokenizes
    ``prompt`` and detokenizes the answer (or passes on the text of an engine that
    answers in text). ``extra_fields`` are the client's request fields dyn does not
    consume, as one JSON object (empty: none): forwarded by the ``openai_proxy`` engine,
    ignored by the others.
    """

    request_id: str
    prompt: str
    # Tokens to generate at most. A client's own value (``max_tokens_param`` names the
    # field that set it) must fit the context with the prompt, or the request is
    # refused; a default (``None``: chat without a cap) is cut to what the prompt leaves.
    max_tokens: int
    max_tokens_param: str | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    stop: list[str] = msgspec.field(default_factory=list)
    seed: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    extra_fields: bytes = b""
    # Alternatives to report with each token's logprob (None: no logprobs); honoured by
    # engines that produce tokens (a text-answering upstream reports its own).
    logprobs: int | None = None


class OutputLogprob(msgspec.Struct, frozen=True, array_like=True):
    """One generated token's log-probability, as bytes (a token may hold part of a
    character), and the most likely tokens at its position, best first."""

    token: bytes
    logprob: float
    top: list[tuple[bytes, float]]


class GenerateOutput(msgspec.Struct, frozen=True, kw_only=True):
    """A piece of the answer.

    ``token_count`` is the number of tokens behind ``text``. The first output carries
    ``prompt_tokens`` and ``cached_tokens`` (prompt tokens found in the prefix cache); the
    last one carries ``finish_reason`` (``"length"`` or ``"stop"``), and ``usage`` when
    the engine counted the request itself (an upstream server): the counts to report in
    place of ``prompt_tokens`` and the sum of ``token_count``. ``more_ready``: the next
    output follows at once, so the frontend may write the two to the client together.
    A stop string ends the answer before it, with ``finish_reason`` ``"stop"``.
    """

    text: str
    token_count: int
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    usage: TokenUsage | None = None
    more_ready: bool = False
    # One per token behind ``text``, when the request asked for logprobs.
    logprobs: list[OutputLogprob] | None = None


class RouteInfo(msgspec.Struct, frozen=True):
    """The strategy in use, what it knows of each live worker, the instances, the
    ejected ones (instance id → seconds of back-off left), replica sync, migrations, and
    how worker KV events reach it (``stream``: each worker's ``kv_events`` stream;
    ``nats``: the run's NATS)."""

    strategy: str
    workers: dict[str, dict[str, Any]]
    instances: list[dict[str, Any]]
    ejected: dict[str, float]
    replica_sync: dict[str, Any] | None
    migrations: float
    kv_events: str = "stream"


class RouteDecisions(msgspec.Struct, frozen=True):
    """A processor's last routing decisions, newest first (``DecisionLog`` rows), and
    how many it has recorded since it started."""

    decisions: list[dict[str, Any]]
    recorded: int


class StrategyRequest(msgspec.Struct, frozen=True):
    strategy: str
    options: dict[str, Any] | None = None


class StrategyReply(msgspec.Struct, frozen=True):
    strategy: str


class ExplainRequest(msgspec.Struct, frozen=True):
    text: str
    max_tokens: int | None = None  # the output budget a strategy may weigh (kv_latency)


class Explanation(msgspec.Struct, frozen=True):
    strategy: str
    prompt_tokens: int
    workers: list[dict[str, Any]]


class ClearAllReply(msgspec.Struct, frozen=True):
    cleared_blocks: int
    workers: int


class SyncApplied(msgspec.Struct, frozen=True):
    applied: bool


class BestWorkerRequest(msgspec.Struct, frozen=True):
    """Either the prompt's ``tokens`` or its ``text`` (tokenized by the router)."""

    tokens: list[int] | None = None
    text: str | None = None


class BestWorker(msgspec.Struct, frozen=True, omit_defaults=True):
    """The worker to send to (None: no worker is live) and how much it holds."""

    worker_id: str | None
    estimated_prefix_hit_rate: float
    overlap_blocks: int | None = None
    strategy: str | None = None


PROCESSOR_GENERATE = EndpointRef("generate", GenerateRequest, GenerateOutput)
PROCESSOR_ROUTE_INFO = EndpointRef("route_info", Empty, RouteInfo)
PROCESSOR_ROUTE_DECISIONS = EndpointRef("route_decisions", Empty, RouteDecisions)
PROCESSOR_SET_STRATEGY = EndpointRef("set_strategy", StrategyRequest, StrategyReply)
PROCESSOR_EXPLAIN = EndpointRef("explain", ExplainRequest, Explanation)
PROCESSOR_CLEAR_KV = EndpointRef("clear_kv", Empty, ClearAllReply)
ROUTER_SYNC = EndpointRef("router_sync", SyncBatch, SyncApplied)
ROUTER_BEST_WORKER = EndpointRef("best_worker", BestWorkerRequest, BestWorker)
