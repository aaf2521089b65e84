"""Streaming clients that record what they got, and the prompts they send.

The graphs they talk to are started with ``_dyn_graph.DynUp`` or ``_inprocess.serve_graph``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from _prompts import WORDS

ROOT = Path(__file__).resolve().parents[2]
KV_GRAPH = ROOT / "graphs" / "kv_routing.yaml"
MODEL = "dyn-mock"


def prompts(count: int, seed: int = 0, words: int = 40) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(count)]


@dataclass
class Streamed:
    """What one streamed completion delivered."""

    request_id: str = ""  # the x-request-id sent, if any
    status: int = 0
    text: str = ""
    tokens: int | None = None  # completion_tokens from the usage chunk
    errors: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    events: int = 0
    finish_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and not self.errors


def completion_body(prompt: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }


async def stream_completion(
    http: httpx.AsyncClient,
    prompt: str,
    max_tokens: int,
    on_event: Any = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Streamed:
    got = Streamed(request_id=(headers or {}).get("x-request-id", ""))
    body = completion_body(prompt, max_tokens, **extra)
    async with http.stream("POST", "/v1/completions", json=body, headers=headers) as resp:
        got.status = resp.status_code
        if resp.status_code != 200:
            await resp.aread()
            got.errors.append(resp.json())
            return got
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                got.done = True
                continue
            event = json.loads(data)
            got.events += 1
            if "error" in event:
                got.errors.append(event)
            elif event["choices"]:
                got.text += event["choices"][0]["text"]
                got.finish_reason = event["choices"][0]["finish_reason"] or got.finish_reason
            elif event.get("usage"):
                got.tokens = event["usage"]["completion_tokens"]
            if on_event is not None:
                await on_event(got)
    return got


async def run_streams(
    url: str,
    texts: list[str],
    max_tokens: int,
    concurrency: int,
    on_event: Any = None,
    request_ids: list[str] | None = None,
    **extra: Any,
) -> list[Streamed]:
    """Stream every text, ``concurrency`` at a time; ``request_ids`` go as x-request-id;
    ``extra`` fields go in every body."""
    results: list[Streamed | None] = [None] * len(texts)
    limit = anyio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:

        async def one(i: int) -> None:
            async with limit:
                headers = {"x-request-id": request_ids[i]} if request_ids else None
                results[i] = await stream_completion(
                    http, texts[i], max_tokens, on_event, headers=headers, **extra
                )

        async with anyio.create_task_group() as tasks:
            for i in range(len(texts)):
                tasks.start_soon(one, i)
    return [r for r in results if r is not None]
