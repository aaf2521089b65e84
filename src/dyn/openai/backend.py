"""An :class:`~dyn.openai.protocol.OpenAIBackend` that calls an endpoint over dyn's runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from dyn.context import HEADER_REQUEST_ID
from dyn.contracts.processor import PROCESSOR_GENERATE, GenerateOutput, GenerateRequest

if TYPE_CHECKING:
    from dyn.runtime.client import Client

__all__ = ["ClientBackend"]


class ClientBackend:
    """Sends the request to the processor's ``generate`` (``client``'s component) and
    reads back :class:`GenerateOutput` items; a malformed one raises ``ProtocolError``.
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    @asynccontextmanager
    async def generate(
        self, request: GenerateRequest
    ) -> AsyncIterator[AsyncIterator[GenerateOutput]]:
        headers = {HEADER_REQUEST_ID: request.request_id}
        async with self._client.stream(PROCESSOR_GENERATE, request, headers=headers) as items:
            yield items
