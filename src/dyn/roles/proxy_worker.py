"""The proxy worker role: a worker whose engine is an upstream OpenAI-compatible server.

Endpoints as the simulated worker's: ``generate`` (an ``EngineRequest`` in,
``EngineOutput`` items out, through :class:`~dyn.engines.openai_proxy.OpenAIProxyEngine`),
``kv_events`` (vLLM's KV events translated, after a snapshot of what the worker has
seen; just the load when the upstream publishes none) and ``clear_kv`` (a no-op: an
OpenAI server offers no way to drop its prefix cache, so benchmark arms that clear
between runs start warm here).

A background task asks the upstream's ``/v1/models`` every ``health_interval_s``. While
the upstream does not answer, the worker withdraws its endpoints from discovery, so
routers stop choosing it and ``dyn route`` no longer lists it; it registers them again
once the upstream answers. Its discovery entries carry ``block_size`` for KV routing.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel

from dyn.context import Context
from dyn.contracts.base import Empty
from dyn.contracts.engine import ClearKvReply
from dyn.engines.base import EngineOutput, EngineRequest
from dyn.engines.openai_proxy import OpenAIProxyConfig, OpenAIProxyEngine
from dyn.engines.openai_proxy.kv_relay import KvEventRelay
from dyn.errors import CallError, TransportError
from dyn.kv.events import WorkerLoad, WorkerUpdate
from dyn.observability.batched import ObservationBatch
from dyn.observability.worker_metrics import WorkerMetrics
from dyn.runtime.component import Component, endpoint
from dyn.tokenizer import load_tokenizer

__all__ = ["ProxyWorker"]

# How often drain() looks whether the requests in flight have finished.
_DRAIN_POLL_S = 0.05


class ProxyWorker(Component[OpenAIProxyConfig]):
    """One upstream server behind dyn's worker protocol."""

    uses_replica_index = True  # replica i talks to upstreams[i % len]

    def metadata(self) -> dict[str, Any]:
        return {
            "block_size": self.config.block_size,
            "upstream": self.config.upstream_for(self.info.replica),
        }

    async def start(self) -> None:
        # The processor's tokenizer: for prompts without text, and for counting an answer
        # whose upstream reports no usage.
        tokenizer = load_tokenizer(self.model.tokenizer if self.model else None)
        self.engine = OpenAIProxyEngine(self.config, tokenizer, replica=self.info.replica)
        self.relay = KvEventRelay(
            self.config.kv_events_for(self.info.replica), self.config.block_size, self.load
        )
        self.metrics = WorkerMetrics.of(self.runtime.registry)
        self.label = self.info.instance_id
        # Updated per output: the labelled children are looked up once, not per token.
        self._itl = self.metrics.itl.labels(self.label)
        self._cached_tokens = self.metrics.cached_prompt_tokens.labels(self.label)
        self.healthy = False
        self._probed = False
        self._closing = False
        self._active_blocks = 0
        self._probe_now = anyio.Event()
        self._watching = anyio.CancelScope()

    def ready(self) -> bool:
        # Ready once the first probe is in, whatever it said: an upstream that is down
        # at start-up must not fail `dyn up`; the worker just stays out of routing.
        return self._probed

    async def run(self) -> None:
        with self._watching:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self.relay.run)
                await self._watch_upstream()

    async def _watch_upstream(self) -> None:
        upstream = self.engine.upstream
        while True:
            try:
                model = await self.engine.probe()
            except CallError as exc:
                if self.healthy or not self._probed:
                    self.log.warning("%s; out of routing until it answers", exc.message)
                self.healthy = False
                # Every time, not only on the change: the launcher may have registered
                # the worker after the first probe already found the upstream down.
                if not self._closing:
                    await self.runtime.withdraw_component(self)
            else:
                if not self.healthy:
                    if self._probed and not self._closing:
                        await self.runtime.serve_component(self, metadata=self.metadata())
                    self.log.info("upstream %s is up, serving %s", upstream, model)
                self.healthy = True
            self._probed = True
            self._probe_now = anyio.Event()
            with anyio.move_on_after(self.config.health_interval_s):
                await self._probe_now.wait()

    def load(self) -> WorkerLoad:
        engine = self.engine
        prompt = engine.prompt_tokens_total
        return WorkerLoad(
            active_blocks=self._active_blocks,
            total_blocks=0,  # an OpenAI server does not say
            waiting=0,
            running=engine.requests_inflight,
            prefix_hit_rate=engine.cached_prompt_tokens_total / prompt if prompt else 0.0,
        )

    async def drain(self) -> None:
        self._closing = True
        while self.engine.requests_inflight:  # noqa: ASYNC110
            await anyio.sleep(_DRAIN_POLL_S)

    async def stop(self) -> None:
        # The probes and the relay end before the client they use is closed.
        self._watching.cancel()
        await anyio.lowlevel.checkpoint()  # let them see the cancellation
        await self.engine.aclose()

    # -- endpoints -----------------------------------------------------------------------

    @endpoint
    async def generate(self, req: EngineRequest, ctx: Context) -> AsyncIterator[EngineOutput]:
        metrics, label = self.metrics, self.label
        cached_tokens = self._cached_tokens
        # Inter-token latencies are added to the histogram once, when the request ends.
        itl = ObservationBatch(self._itl)
        gaps = itl.values
        blocks = math.ceil(len(req.tokens) / self.config.block_size)
        self._active_blocks += blocks
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
                    first = False
                else:
                    gaps.append(now - last)
                # The upstream reports cached tokens once, on the first or the last output.
                if output.cached_tokens:
                    cached_tokens.inc(output.cached_tokens)
                last = now
                yield output
            status = "ok"
        except CallError as exc:
            status = "error"
            if isinstance(exc, TransportError):
                self._probe_now.set()  # find out now rather than at the next interval
            raise
        except Exception:
            status = "error"
            raise
        finally:
            self._active_blocks -= blocks
            itl.flush()
            metrics.inflight.labels(label).dec()
            metrics.requests.labels(label, status).inc()
            metrics.duration.labels(label).observe(time.perf_counter() - started)

    @endpoint
    async def kv_events(self, request: Empty, ctx: Context) -> AsyncIterator[WorkerUpdate]:
        async for update in self.relay.subscribe():
            if update.load is not None:
                self.metrics.kv_active_blocks.labels(self.label).set(update.load.active_blocks)
            yield update

    @endpoint
    async def clear_kv(self, request: Empty, ctx: Context) -> AsyncIterator[ClearKvReply]:
        yield ClearKvReply(cleared_blocks=0)
