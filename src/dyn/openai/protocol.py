"""What the OpenAI layer asks of the serving graph behind it, and what it gets back.

The frontend turns each HTTP request into one :class:`GenerateRequest`; a backend (in a
graph, the processor role reached over dyn's runtime, which sees
``msgspec.to_builtins(request)``) answers with a stream of :class:`GenerateOutput`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import msgspec

__all__ = ["GenerateOutput", "GenerateRequest", "ModelInfo", "OpenAIBackend"]


class ModelInfo(msgspec.Struct, frozen=True):
    """The one model a frontend serves, as ``/v1/models`` lists it."""

    id: str
    max_model_len: int
    created: int
    owned_by: str = "dyn"


class GenerateRequest(msgspec.Struct, kw_only=True):
    """One generation, text in. The backend tokenizes ``prompt``, applies ``stop``
    (output ends before the first stop string, which is not returned) and detokenizes.
    """

    request_id: str
    prompt: str
    # Tokens to generate at most; the backend also stops at the end of the context
    # (``max_model_len``), which is what a chat request without max_tokens relies on.
    max_tokens: int
    ignore_eos: bool = False
    min_tokens: int = 0
    stop: list[str] = msgspec.field(default_factory=list)
    seed: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0


class GenerateOutput(msgspec.Struct, kw_only=True):
    """A piece of the answer.

    ``token_count`` is the number of tokens behind ``text``. The first output carries
    ``prompt_tokens`` and ``cached_tokens`` (prompt tokens found in the prefix cache); the
    last one carries ``finish_reason`` (``"length"`` or ``"stop"``).
    """

    text: str
    token_count: int
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None


class OpenAIBackend(Protocol):
    """Generates text for the OpenAI routes.

    ``generate`` returns an async context manager (it must not block or raise before
    being entered); entering it yields the outputs, leaving it early (the client went
    away) must cancel the generation. Expected failures raise
    :class:`~dyn.errors.DynError`: a :class:`~dyn.errors.CallError`'s ``code`` picks the
    HTTP status (``overloaded`` 429, ``unavailable`` 503, ``bad_request`` 400, ...), a
    :class:`~dyn.errors.NoInstancesError` is a 503.
    """

    def generate(
        self, request: GenerateRequest
    ) -> AbstractAsyncContextManager[AsyncIterator[GenerateOutput]]: ...
