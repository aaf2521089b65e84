"""The classic hello-world pipeline's roles (docs/example-graphs.md): Middle appends
``-mid``, Backend appends ``-back`` and streams the words one at a time. Each hop
prefixes what it relays.

They double as the example of writing your own component (see the README).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import msgspec

from dyn.context import Context
from dyn.contracts.base import Text
from dyn.contracts.demo import HELLO_GENERATE, HelloRequest
from dyn.runtime.component import Component, depends, endpoint

__all__ = ["Backend", "BackendConfig", "Middle", "MiddleConfig"]


class MiddleConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    suffix: str = "-mid"
    prefix: str = "Middle: "


class Middle(Component[MiddleConfig]):
    """Appends a suffix, forwards to the backend, and prefixes every item it relays."""

    backend = depends(calls=(HELLO_GENERATE,))
    example_request: ClassVar[dict[str, Any] | None] = {"text": "test"}

    @endpoint
    async def generate(self, request: HelloRequest, ctx: Context) -> AsyncIterator[Text]:
        forwarded = HelloRequest(text=request.text + self.config.suffix)
        async with self.backend.stream(HELLO_GENERATE, forwarded) as items:
            async for item in items:
                yield Text(f"{self.config.prefix}{item.text}")


class BackendConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    suffix: str = "-back"
    prefix: str = "Backend: "
    delay_s: float = 0.0


class Backend(Component[BackendConfig]):
    """Appends a suffix, then streams the words of the text one at a time."""

    @endpoint
    async def generate(self, request: HelloRequest, ctx: Context) -> AsyncIterator[Text]:
        import anyio

        text = request.text + self.config.suffix
        for word in text.split():
            if self.config.delay_s:
                await anyio.sleep(self.config.delay_s)
            yield Text(f"{self.config.prefix}{word}")
