"""What the OpenAI layer asks of the serving graph behind it, and what it gets back.

The frontend turns each HTTP request into one :class:`GenerateRequest`; a backend (in a
graph, the processor role reached over dyn's runtime) answers with a stream of
:class:`GenerateOutput`. Both messages are the processor's contract
(:mod:`dyn.contracts.processor`), re-exported here for the OpenAI layer's users.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import msgspec

from dyn.contracts.processor import GenerateOutput, GenerateRequest, TokenUsage

__all__ = ["GenerateOutput", "GenerateRequest", "ModelInfo", "OpenAIBackend", "TokenUsage"]


class ModelInfo(msgspec.Struct, frozen=True):
    """The one model a frontend serves, as ``/v1/models`` lists it."""

    id: str
    max_model_len: int
    created: int
    owned_by: str = "dyn"


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
