"""ClientBackend: the OpenAI routes' backend over dyn's runtime, and light imports."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dyn.context import Context
from dyn.discovery.memory import MemoryDiscovery
from dyn.errors import ProtocolError
from dyn.openai import ClientBackend, GenerateOutput, GenerateRequest
from dyn.runtime.component import Component, EmptyConfig, endpoint
from dyn.runtime.runtime import Runtime, component_info
from dyn.transports.inproc import InprocTransport

pytestmark = pytest.mark.anyio
SEEN: list[tuple[Any, str]] = []


class Processor(Component[EmptyConfig]):
    @endpoint
    async def generate(self, request: Any, ctx: Context) -> AsyncIterator[Any]:
        SEEN.append((request, ctx.request_id))
        if request["prompt"] == "bad":
            yield {"txt": "?"}
            return
        yield {"text": "a", "token_count": 1, "prompt_tokens": 3, "cached_tokens": 0}
        yield {"text": "b", "token_count": 1, "finish_reason": "stop"}


async def test_client_backend_round_trip() -> None:
    async with Runtime(
        namespace="t", transport=InprocTransport(), discovery=MemoryDiscovery()
    ) as runtime:
        await runtime.serve_component(
            Processor(EmptyConfig(), component_info("t", "processor"), {})
        )
        client = runtime.client("processor")
        await client.wait_for_instances()
        backend = ClientBackend(client)
        request = GenerateRequest(request_id="rid-7", prompt="hi", max_tokens=2, stop=["x"])
        async with backend.generate(request) as items:
            outputs = [item async for item in items]
        assert outputs == [
            GenerateOutput(text="a", token_count=1, prompt_tokens=3, cached_tokens=0),
            GenerateOutput(text="b", token_count=1, finish_reason="stop"),
        ]
        payload, request_id = SEEN[-1]
        assert request_id == "rid-7"
        assert payload["stop"] == ["x"]
        assert payload["max_tokens"] == 2
        bad = GenerateRequest(request_id="r", prompt="bad", max_tokens=1)
        with pytest.raises(ProtocolError, match="malformed output"):
            async with backend.generate(bad) as items:
                _ = [item async for item in items]


def test_protocol_import_stays_light() -> None:
    code = (
        "import sys, dyn.openai, dyn.tokenizer\n"
        "print(','.join(m for m in ('starlette', 'prometheus_client', 'uvicorn')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
