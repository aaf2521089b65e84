"""The worker role: hosts a simulated LLM engine (the mocker) and serves it.

Endpoints: ``generate`` (an ``EngineRequest`` in, ``EngineOutput`` items out),
``kv_events`` (the engine's KV events and load, a snapshot first on every
subscription) and ``clear_kv`` (drop the cached blocks, e.g. between benchmark arms).
Its discovery entries carry its block size, which KV-aware routers check.

``max_queued`` bounds what a worker holds: past ``max_num_seqs + max_queued`` generations
at once it refuses a new one at once with code ``overloaded`` (the frontend's 429 with
Retry-After) rather than letting its queue, and every request's wait, grow without end.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import msgspec
from prometheus_client import Counter

from dyn.context import Context
from dyn.contracts.base import Empty
from dyn.contracts.engine import ClearKvReply
from dyn.engines.base import EngineOutput, EngineRequest
from dyn.engines.mocker import MockerConfig, MockerEngine
from dyn.engines.unsupported import refuse_unsupported_fields
from dyn.errors import OverloadedError
from dyn.kv.events import WorkerUpdate
from dyn.observability.batched import ObservationBatch
from dyn.observability.worker_metrics import WorkerMetrics
from dyn.roles.kv_plane import publish_kv_events
from dyn.runtime.component import Component, endpoint
from dyn.tokenizer import load_tokenizer

__all__ = ["Worker", "WorkerConfig", "mocker_token_limit"]


class WorkerConfig(MockerConfig, forbid_unknown_fields=True, frozen=True):
    """The mocker's settings (docs/mocker-timing.md) plus the worker's own bound on its queue."""

    # Generations that may wait beyond the max_num_seqs the engine runs at once; one more
    # is refused with code "overloaded". Unset: no bound (every request waits its turn).
    max_queued: Annotated[int, msgspec.Meta(ge=0)] | None = None


def mocker_token_limit(config: MockerConfig) -> tuple[int, str]:
    """The most tokens one request may hold in a mocker with ``config``: the blocks it
    admits a request into (all but the watermark) times the block size."""
    tokens = config.admit_limit * config.block_size
    how = (
        f"num_gpu_blocks {config.num_gpu_blocks} × block_size {config.block_size}, "
        f"less the {config.watermark:.0%} watermark, = {tokens} tokens"
    )
    return tokens, how


class Worker(Component[WorkerConfig]):
    """One engine instance; its config is the mocker's plus ``max_queued``."""

    @classmethod
    def request_token_limit(cls, config: WorkerConfig) -> tuple[int, str] | None:
        return mocker_token_limit(config)

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
        self._own = _OwnMetrics(self.metrics, self.label)
        self._active = 0  # generate calls in flight, which drain() waits for
        queued = self.config.max_queued
        # Counted against calls in flight, not the engine's waiting list: requests that
        # arrive between two engine steps all wait until the next one, however few.
        self._max_active = None if queued is None else self.config.max_num_seqs + queued
        self._idle = anyio.Event()
        self._idle.set()

    async def run(self) -> None:
        async with anyio.create_task_group() as tasks:
            # On a broker transport the worker publishes its KV events for every router.
            tasks.start_soon(publish_kv_events, self.runtime, self.info, self.engine.subscribe)
            await self.engine.run()
            tasks.cancel_scope.cancel()

    @endpoint
    async def generate(self, req: EngineRequest, ctx: Context) -> AsyncIterator[EngineOutput]:
        self.refuse_if_full()
        if req.extra_fields:
            refuse_unsupported_fields(req.extra_fields)
        own = self._own
        # Inter-token latencies are added to the histogram once, when the request ends.
        itl = ObservationBatch(own.itl)
        gaps = itl.values
        clock = time.perf_counter
        started = last = clock()
        status = "cancelled"
        own.inflight.inc()
        if self._active == 0:
            self._idle = anyio.Event()
        self._active += 1
        try:
            first = True
            async for output in self.engine.generate(req):
                now = clock()
                if first:
                    own.ttft.observe(now - started)
                    own.prompt_tokens.inc(len(req.tokens))
                    own.cached_prompt_tokens.inc(output.cached_tokens)
                    first = False
                else:
                    gaps.append(now - last)
                last = now
                yield output
            status = "ok"
        except Exception:
            status = "error"
            raise
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()
            own.inflight.dec()
            itl.flush()
            own.finished(status)
            own.duration.observe(clock() - started)
            own.kv_active_blocks.set(self.engine.load().active_blocks)

    def refuse_if_full(self) -> None:
        """Raise ``OverloadedError`` if one more generation would pass ``max_queued``
        (subclasses call it before work they would otherwise waste)."""
        if self._max_active is not None and self._active >= self._max_active:
            self._own.finished("overloaded")
            raise OverloadedError(
                f"worker {self.label} is at its limit of {self.config.max_num_seqs} running "
                f"and {self.config.max_queued} queued requests; retry later"
            )

    async def drain(self) -> None:
        """Wait for the generations in flight (the launcher has deregistered us already)."""
        if self._active:
            self.log.info("draining %d requests in flight", self._active)
        await self._idle.wait()

    @endpoint
    async def kv_events(self, request: Empty, ctx: Context) -> AsyncIterator[WorkerUpdate]:
        async for update in self.engine.subscribe():
            if update.load is not None:
                self._own.kv_active_blocks.set(update.load.active_blocks)
            yield update

    @endpoint
    async def clear_kv(self, request: Empty, ctx: Context) -> AsyncIterator[ClearKvReply]:
        yield ClearKvReply(cleared_blocks=self.engine.clear_cache())


class _OwnMetrics:
    """One worker's children of the shared metric families, looked up once: ``labels()``
    takes a lock and hashes the label values on every call, several times per token."""

    def __init__(self, metrics: WorkerMetrics, label: str) -> None:
        self.prompt_tokens = metrics.prompt_tokens.labels(label)
        self.cached_prompt_tokens = metrics.cached_prompt_tokens.labels(label)
        self.kv_active_blocks = metrics.kv_active_blocks.labels(label)
        self.inflight = metrics.inflight.labels(label)
        self.ttft = metrics.ttft.labels(label)
        self.itl = metrics.itl.labels(label)
        self.duration = metrics.duration.labels(label)
        self._requests = metrics.requests
        self._label = label
        # By status, made on first use so that /metrics shows only statuses that occurred.
        self._finished: dict[str, Counter] = {}

    def finished(self, status: str) -> None:
        counter = self._finished.get(status)
        if counter is None:
            counter = self._finished[status] = self._requests.labels(self._label, status)
        counter.inc()
