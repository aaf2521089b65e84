"""An :class:`~dyn.openai.protocol.OpenAIBackend` that calls an endpoint over dyn's runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dyn.context import HEADER_REQUEST_ID
from dyn.contracts.processor import PROCESSOR_GENERATE, GenerateOutput, GenerateRequest

if TYPE_CHECKING:
    from dyn.runtime.client import Client, ResponseStream

__all__ = ["ClientBackend"]


class ClientBackend:
    """Sends the request to the processor's ``generate`` (``client``'s component) and
    reads back :class:`GenerateOutput` items; a malformed one raises ``ProtocolError``.
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    def generate(self, request: GenerateRequest) -> ResponseStream[GenerateOutput]:
        # The stream is its own context manager: no generator-based wrapper per request.
        headers = {HEADER_REQUEST_ID: request.request_id}
        return self._client.stream(PROCESSOR_GENERATE, request, headers=headers)
