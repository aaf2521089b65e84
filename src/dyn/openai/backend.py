"""An :class:`~dyn.openai.protocol.OpenAIBackend` that calls an endpoint over dyn's runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import msgspec

from dyn.context import HEADER_REQUEST_ID
from dyn.openai.protocol import GenerateOutput, GenerateRequest

if TYPE_CHECKING:
    from dyn.runtime.client import Client

__all__ = ["ClientBackend"]


class ClientBackend:
    """Sends ``msgspec.to_builtins(request)`` to ``endpoint`` of ``client``'s component
    (the processor) and reads back dicts shaped like :class:`GenerateOutput`.
    """

    def __init__(self, client: Client, endpoint: str = "generate") -> None:
        self._client = client
        self._endpoint = endpoint

    @asynccontextmanager
    async def generate(
        self, request: GenerateRequest
    ) -> AsyncIterator[AsyncIterator[GenerateOutput]]:
        payload = msgspec.to_builtins(request)
        headers = {HEADER_REQUEST_ID: request.request_id}
        async with self._client.stream(self._endpoint, payload, headers=headers) as items:
            yield _outputs(items)


async def _outputs(items: AsyncIterator[object]) -> AsyncIterator[GenerateOutput]:
    async for item in items:
        try:
            yield msgspec.convert(item, GenerateOutput)
        except msgspec.ValidationError as exc:
            from dyn.errors import ProtocolError

            raise ProtocolError(f"the backend sent a malformed output: {exc}") from exc
