"""The echo engine: replays the prompt's tokens, one per step, cycling if it must."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio

from dyn.engines.base import Engine, EngineOutput, EngineRequest

__all__ = ["EchoEngine"]


class EchoEngine(Engine):
    """Useful to test a pipeline's plumbing without any model behaviour."""

    def __init__(self, *, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        prompt = request.tokens or [0]
        for step in range(request.max_tokens):
            if self.delay_s:
                await anyio.sleep(self.delay_s)
            last = step == request.max_tokens - 1
            yield EngineOutput(
                tokens=[prompt[step % len(prompt)]], finish_reason="length" if last else None
            )
