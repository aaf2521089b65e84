"""The engine interface: what a worker hosts to turn prompt tokens into output tokens."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

import msgspec

__all__ = ["Engine", "EngineOutput", "EngineRequest"]


class EngineRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One generation: the prompt's token ids and how many tokens to produce.

    This is also the payload of a worker's ``generate`` endpoint.
    """

    request_id: str
    tokens: list[int]
    max_tokens: int
    ignore_eos: bool = False
    min_tokens: int = 0


class EngineOutput(msgspec.Struct, frozen=True, kw_only=True):
    """One step's new tokens; the last output carries ``finish_reason``.

    ``cached_tokens`` (prompt tokens served from the prefix cache) is set on the first
    output of a request and 0 afterwards.
    """

    tokens: list[int]
    finish_reason: str | None = None  # "length" (max_tokens) or "stop" (end of sequence)
    cached_tokens: int = 0


class Engine(ABC):
    """Generates tokens. One engine object serves many concurrent requests.

    ``generate`` is an async generator; closing it early (the request was cancelled)
    must release everything the request held.
    """

    @abstractmethod
    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        """Stream the outputs for ``request`` until ``max_tokens`` or end of sequence."""
