"""The worker role: hosts a simulated LLM engine (the mocker) and serves it.

Endpoints: ``generate`` (an ``EngineRequest`` in, ``EngineOutput`` items out),
``kv_events`` (the engine's KV events and load, a snapshot first on every
subscription) and ``clear_kv`` (drop the cached blocks, e.g. between benchmark arms).
Its discovery entries carry its block size, which KV-aware routers check.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from dyn.engines.base import EngineRequest
from dyn.engines.mocker import MockerConfig, MockerEngine
from dyn.errors import BadRequestError
from dyn.observability.worker_metrics import WorkerMetrics
from dyn.runtime.component import Component, endpoint
from dyn.runtime.context import Context
from dyn.tokenizer import load_tokenizer

__all__ = ["Worker"]


class Worker(Component[MockerConfig]):
    """One engine instance; its config is the mocker's (REFERENCE.md §5)."""

    def metadata(self) -> dict[str, Any]:
        return {"block_size": self.config.block_size, "total_blocks": self.config.num_gpu_blocks}

    async def start(self) -> None:
        # The engine samples ids the processor's tokenizer must decode: same vocabulary.
        tokenizer = load_tokenizer(self.model.tokenizer if self.model else None)
        config = msgspec.structs.replace(
            self.config, vocab_size=tokenizer.vocab_size, eos_token_id=tokenizer.eos_token_id
        )
        self.engine = MockerEngine(config)
        self.metrics = WorkerMetrics.of(self.runtime.registry)
        self.label = self.info.instance_id
        self.metrics.kv_total_blocks.labels(self.label).set(self.config.num_gpu_blocks)

    async def run(self) -> None:
        await self.engine.run()

    @endpoint
    async def generate(self, request: Any, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        try:
            req = msgspec.convert(request, EngineRequest)
        except msgspec.ValidationError as exc:
            raise BadRequestError(f"invalid engine request: {exc}") from exc
        metrics, label = self.metrics, self.label
        started = last = time.perf_counter()
        status = "cancelled"
        metrics.inflight.labels(label).inc()
        try:
            first = True
            async for output in self.engine.generate(req):
                now = time.perf_counter()
                if first:
                    metrics.ttft.labels(label).observe(now - started)
                    metrics.prompt_tokens.labels(label).inc(len(req.tokens))
                    metrics.cached_prompt_tokens.labels(label).inc(output.cached_tokens)
                    first = False
                else:
                    metrics.itl.labels(label).observe(now - last)
                last = now
                yield msgspec.to_builtins(output)
            status = "ok"
        except Exception:
            status = "error"
            raise
        finally:
            metrics.inflight.labels(label).dec()
            metrics.requests.labels(label, status).inc()
            metrics.duration.labels(label).observe(time.perf_counter() - started)
            metrics.kv_active_blocks.labels(label).set(self.engine.load().active_blocks)

    @endpoint
    async def kv_events(self, request: Any, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        async for update in self.engine.subscribe():
            if update.load is not None:
                self.metrics.kv_active_blocks.labels(self.label).set(update.load.active_blocks)
            yield msgspec.to_builtins(update)

    @endpoint
    async def clear_kv(self, request: Any, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        yield {"cleared_blocks": self.engine.clear_cache()}
