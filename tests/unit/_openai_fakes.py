"""A canned backend and a loopback uvicorn server for the OpenAI route tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import uvicorn
from _dyn_graph import free_port
from starlette.applications import Starlette

from dyn.openai import GenerateOutput, GenerateRequest, ModelInfo, OpenAIMetrics
from dyn.openai.routes import build_openai_routes

MODEL = ModelInfo(id="test-model", max_model_len=128, created=1_700_000_000)
CREATED = 1_700_000_000

HELLO = [
    GenerateOutput(text="Hello", token_count=1, prompt_tokens=5, cached_tokens=2),
    GenerateOutput(text=" world", token_count=1),
    GenerateOutput(text="!", token_count=1, finish_reason="length"),
]


class FakeBackend:
    """Yields ``outputs``; raises ``error`` at the start, or after ``fail_after`` outputs."""

    def __init__(
        self,
        outputs: list[GenerateOutput] | None = None,
        *,
        error: Exception | None = None,
        fail_after: int | None = None,
        delay: float = 0.0,
    ) -> None:
        self.outputs = HELLO if outputs is None else outputs
        self.error = error
        self.fail_after = fail_after
        self.delay = delay
        self.requests: list[GenerateRequest] = []
        self.closed = anyio.Event()

    @asynccontextmanager
    async def generate(self, request: GenerateRequest) -> AsyncIterator[Any]:
        self.requests.append(request)
        try:
            if self.error is not None and self.fail_after is None:
                raise self.error
            yield self._items()
        finally:
            self.closed.set()

    async def _items(self) -> AsyncIterator[GenerateOutput]:
        for i, output in enumerate(self.outputs):
            if self.fail_after is not None and i == self.fail_after:
                assert self.error is not None
                raise self.error
            if self.delay:
                await anyio.sleep(self.delay)
            yield output


@asynccontextmanager
async def serving(
    backend: Any,
    *,
    metrics: OpenAIMetrics | None = None,
    max_body_bytes: int = 1 << 20,
) -> AsyncIterator[str]:
    """Serve the routes over a real loopback socket; yields the base URL."""
    routes = build_openai_routes(
        backend, MODEL, metrics, max_body_bytes=max_body_bytes, clock=lambda: CREATED
    )
    port = free_port()
    config = uvicorn.Config(
        Starlette(routes=routes), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve)
        with anyio.fail_after(5):
            while not server.started:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
