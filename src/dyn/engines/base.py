"""The engine interface: what a worker hosts to turn prompt tokens into output tokens."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

import msgspec

__all__ = ["Engine", "EngineOutput", "EngineRequest", "TokenLogprob", "TokenUsage"]


class EngineRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One generation: the prompt's token ids and how many tokens to produce.

    This is also the payload of a worker's ``generate`` endpoint. ``text`` and
    ``extra_fields`` are for engines that forward the request to a server taking text
    (the ``openai_proxy``); every other engine ignores them.
    """

    request_id: str
    tokens: list[int]
    max_tokens: int
    ignore_eos: bool = False
    min_tokens: int = 0
    # The prompt as text when the processor has it exactly (on a resend after text was
    # passed through: the prompt followed by that text); None: decode ``tokens``.
    text: str | None = None
    # The client's request fields dyn does not consume, as one JSON object, each value
    # as the client wrote it; empty when there are none.
    extra_fields: bytes = b""
    # The client's sampling seed (None: the engine's own); a resend carries it too.
    seed: int | None = None
    # Alternatives to report with each token's log-probability (None: no logprobs).
    logprobs: int | None = None
    # Output tokens an earlier attempt generated, at the end of ``tokens`` (a resend
    # after migration): where in its output the continuation starts.
    prior_output_tokens: int = 0


class TokenUsage(msgspec.Struct, frozen=True, kw_only=True):
    """A whole request's token counts as the engine itself reports them (an upstream
    server's ``usage``)."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


class TokenLogprob(msgspec.Struct, frozen=True, array_like=True):
    """The log-probability of one generated token and the most likely tokens at that
    position, ``(token id, logprob)`` best first (the generated one among them)."""

    logprob: float
    top: list[tuple[int, float]]


class EngineOutput(msgspec.Struct, frozen=True, kw_only=True):
    """One step's new tokens; the last output carries ``finish_reason``.

    ``cached_tokens`` (prompt tokens served from the prefix cache) is set on the first
    output of a request and 0 afterwards. An engine whose server answers in text (the
    ``openai_proxy``) sets ``text`` instead of ``tokens``: the processor passes it on
    as it is, without detokenizing, and the last output carries the server's ``usage``.
    ``more_ready`` says the next output is already here (it came in the same read from
    the server): a relay may hold this one back and write both at once. ``logprobs``
    (only when the request asked) has one entry per token.
    """

    tokens: list[int] = msgspec.field(default_factory=list)
    finish_reason: str | None = None  # "length" (max_tokens) or "stop" (end of sequence)
    cached_tokens: int = 0
    text: str | None = None
    usage: TokenUsage | None = None
    more_ready: bool = False
    # One per token of ``tokens`` when the request asked for logprobs.
    logprobs: list[TokenLogprob] | None = None


class Engine(ABC):
    """Generates tokens. One engine object serves many concurrent requests.

    ``generate`` is an async generator; closing it early (the request was cancelled)
    must release everything the request held.
    """

    @abstractmethod
    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        """Stream the outputs for ``request`` until ``max_tokens`` or end of sequence."""
