"""The processor role: tokenize, route to a worker, call it, detokenize (or pass on the
text of an engine that answers in text, such as the ``openai_proxy``).

Stop strings are matched here, on the detokenized text, as vLLM's detokenizer does: the
answer ends before the first one with ``finish_reason`` ``"stop"`` and the worker's
request is cancelled. Text an upstream server wrote is passed on as it is: the upstream
got the client's ``stop`` and applied it already.

It speaks the OpenAI layer's ``GenerateRequest`` / ``GenerateOutput`` on ``generate``
and the worker's ``EngineRequest`` / ``EngineOutput`` downstream. It follows every
worker's KV events and load (:mod:`dyn.roles.kv_plane`: each worker's ``kv_events``
stream, or their NATS subjects when the transport is nats) and feeds the routing
strategy, which can be switched while running (``set_strategy``), asked to explain a
decision (``explain``) and to list its last ones (``route_decisions``); ``clear_kv``
empties every worker's prefix cache (between benchmark arms). Replicas of one processor
share their routers' in-flight load through ``router_sync`` (:mod:`dyn.roles.replica_sync`)
unless ``replica_sync`` is off.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any, ClassVar

import anyio
import msgspec

from dyn import plugins
from dyn.context import Context
from dyn.contracts.base import Empty
from dyn.contracts.engine import ENGINE_CLEAR_KV, ENGINE_GENERATE, ENGINE_KV_EVENTS
from dyn.contracts.processor import (
    ClearAllReply,
    ExplainRequest,
    Explanation,
    GenerateOutput,
    GenerateRequest,
    OutputLogprob,
    RouteDecisions,
    RouteInfo,
    StrategyReply,
    StrategyRequest,
    SyncApplied,
)
from dyn.engines.base import EngineOutput, EngineRequest, TokenUsage
from dyn.errors import BadRequestError, CallError, DynError, OverloadedError, TransportError
from dyn.kv.events import KvRemoved, KvStored, WorkerUpdate
from dyn.observability.worker_metrics import RouterMetrics
from dyn.openai.models import context_overflow
from dyn.roles.kv_plane import kv_plane_for
from dyn.roles.replica_sync import ReplicaLink
from dyn.routing.base import RouteRequest, RoutingStrategy
from dyn.routing.decisions import DecisionLog
from dyn.routing.kv.sync import SyncBatch
from dyn.runtime.component import Component, depends, endpoint
from dyn.tokenizer import Tokenizer, load_tokenizer
from dyn.tokenizer.stop import StopMatcher

__all__ = ["Processor", "ProcessorConfig"]

# Dynamo's default is 0 (off); dyn resends a broken stream up to three times by default.
DEFAULT_MIGRATION_LIMIT = 3
# A request that got nothing back from a dead instance is sent to another one (never to
# one that already failed it); this bounds how many it tries.
MAX_REROUTES = 8


class ProcessorConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    strategy: str = "kv"
    strategy_options: dict[str, Any] = msgspec.field(default_factory=dict)
    seed: int | None = None
    # How many times one request may be resent after its worker's stream broke mid-way.
    migration_limit: Annotated[int, msgspec.Meta(ge=0)] = DEFAULT_MIGRATION_LIMIT
    # Share in-flight load with the other replicas of this processor (kv strategies).
    replica_sync: bool = True


class Processor(Component[ProcessorConfig]):
    """Tokenizes, routes with the configured strategy, and detokenizes the stream."""

    # Replicas keep their routers in step (replica_sync), so the auto layout may run one
    # beside each frontend replica.
    scales_with_cores: ClassVar[bool] = True

    @classmethod
    def replicas_in_step(cls, config: ProcessorConfig) -> bool:
        # Unsynced routers would each route blind to the others' load.
        return config.replica_sync

    # kv_events is followed, and clear_kv called, only on the instances that serve them.
    worker = depends(calls=(ENGINE_GENERATE,), may_call=(ENGINE_KV_EVENTS, ENGINE_CLEAR_KV))

    async def start(self) -> None:
        self._active = 0  # generate calls in flight
        self._idle = anyio.Event()
        self._idle.set()
        model = self.model
        self.tokenizer: Tokenizer = load_tokenizer(model.tokenizer if model else None)
        self.max_model_len = model.max_model_len if model else None
        self.metrics = RouterMetrics.of(self.runtime.registry)
        self.strategy = ""
        self._subscriptions = anyio.CancelScope()
        # Where the workers' KV events come from: their streams, or the run's NATS.
        self._kv_plane = kv_plane_for(self.runtime, self.worker, self.log)
        # What each worker last reported, whatever the strategy: for `dyn route`.
        self.worker_stats: dict[str, dict[str, float]] = {}
        # The last decisions, whatever the strategy: kept across strategy switches.
        self.decisions = DecisionLog()
        self.replicas: ReplicaLink | None = None
        if self.config.replica_sync:
            peers = self.runtime.client(self.info.component)
            self.replicas = ReplicaLink(peers, self.info.instance_id, self.log)
        self._install(self.config.strategy, self.config.strategy_options)

    def _install(self, strategy: str, options: Mapping[str, Any]) -> None:
        router_cls = plugins.load("dyn.routers", strategy)
        router: RoutingStrategy = router_cls(dict(options) or None, seed=self.config.seed)
        router.decisions = self.decisions
        self.worker.set_router(router)
        self.strategy = plugins.canonical(strategy)
        if self.replicas is not None:
            self.replicas.attach(router)
        # A new router starts empty: resubscribe so every worker sends it a snapshot.
        self._subscriptions.cancel()

    async def run(self) -> None:
        async with anyio.create_task_group() as tasks:
            if self.replicas is not None:
                tasks.start_soon(self.replicas.run)
            while True:
                with anyio.CancelScope() as scope:
                    self._subscriptions = scope
                    await self._kv_plane.follow(self._apply, self._forget)

    def _forget(self, instance_id: str) -> None:
        self.worker_stats.pop(instance_id, None)

    def _apply(self, instance_id: str, update: WorkerUpdate) -> None:
        router = self.worker.router
        stats = self.worker_stats.setdefault(instance_id, {"cached_blocks": 0})
        for event in update.events:
            router.on_kv_event(instance_id, event)
            data = event.data
            if isinstance(data, KvStored):
                stats["cached_blocks"] += len(data.blocks)
            elif isinstance(data, KvRemoved):
                stats["cached_blocks"] -= len(data.block_hashes)
            else:
                stats["cached_blocks"] = 0
        if update.load is not None:
            router.on_load(instance_id, update.load)
            stats.update(msgspec.structs.asdict(update.load))

    # -- endpoints -----------------------------------------------------------------------

    @endpoint
    async def generate(self, req: GenerateRequest, ctx: Context) -> AsyncIterator[GenerateOutput]:
        # drain() waits for these: a stopping processor finishes the streams it carries.
        if self._active == 0:
            self._idle = anyio.Event()
        self._active += 1
        try:
            tokens = self.tokenizer.encode(req.prompt)
            max_tokens = req.max_tokens
            if self.max_model_len is not None:
                room = self.max_model_len - len(tokens)
                param = req.max_tokens_param
                if param is not None and max_tokens > room:
                    # The client's own value is never cut short: it is refused as sent.
                    overflow = context_overflow(max_tokens, len(tokens), self.max_model_len, param)
                    raise BadRequestError(overflow, param=param)
                if room < 1:
                    # ``prompt`` is this request's field; the frontend names a chat's own.
                    raise BadRequestError(
                        f"this model's maximum context length is {self.max_model_len} tokens; "
                        f"the prompt alone has {len(tokens)}",
                        param="prompt",
                    )
                # Without a cap of the client's, a chat may run to the end of the context.
                max_tokens = min(max_tokens, room)
            decoder = self.tokenizer.incremental_decoder()
            stopper = StopMatcher(req.stop) if req.stop else None
            generated: list[int] = []  # every token sent on, so a resend can continue after it
            passed: list[str] = []  # every text delta passed on, from an engine answering text
            sent_tokens: list[int] = tokens
            sent_text: str | None = req.prompt
            done = 0  # tokens generated before this attempt (a resend asks for the rest)
            answered = False  # whether the client got an output yet
            migrations = 0
            failed: set[str] = set()
            while True:
                engine_request = EngineRequest(
                    request_id=req.request_id,
                    tokens=sent_tokens,
                    max_tokens=max_tokens - done,
                    ignore_eos=req.ignore_eos,
                    min_tokens=max(0, req.min_tokens - done),
                    text=sent_text,
                    extra_fields=req.extra_fields,
                    seed=req.seed,
                    logprobs=req.logprobs,
                    prior_output_tokens=done,
                )
                route = RouteRequest(
                    request_id=req.request_id,
                    tokens=sent_tokens,
                    extra={"max_tokens": engine_request.max_tokens},
                )
                received = 0
                stream = self.worker.stream(
                    ENGINE_GENERATE, engine_request, route=route, exclude=failed
                )
                try:
                    async with stream as outputs:
                        async for out in outputs:
                            if received == 0 and outputs.instance is not None:
                                self.metrics.decision(outputs.instance.instance_id)
                            first = not answered
                            answered = True
                            received += 1
                            text = out.text
                            finish = out.finish_reason
                            logprobs = None
                            if text is None:
                                generated += out.tokens
                                text = decoder.feed(out.tokens)
                                if finish is not None:
                                    text += decoder.flush()
                                count = len(out.tokens)
                                if out.logprobs is not None:
                                    logprobs = self._logprobs(out)
                                # Like vLLM, stop strings count from min_tokens on.
                                if stopper is not None and len(generated) >= req.min_tokens:
                                    text, hit = stopper.feed(text)
                                    if hit:
                                        finish = "stop"
                                    elif finish is not None:
                                        text += stopper.flush()
                            else:  # passed on as the engine wrote it: no detokenizing
                                passed.append(text)
                                count = 1 if text else 0  # an upstream chunk: one decode step
                            resent = received == 1 and not first
                            yield GenerateOutput(
                                text=text,
                                token_count=count,
                                finish_reason=finish,
                                prompt_tokens=len(tokens) if first else None,
                                cached_tokens=_cached(out, first, resent=resent),
                                usage=_usage(out, len(tokens), done),
                                # Outputs that came in together (one read of the worker's
                                # connection) leave the frontend in one write.
                                more_ready=out.more_ready or outputs.has_ready(),
                                logprobs=logprobs,
                            )
                            if finish is not None and out.finish_reason is None:
                                # A stop string: leaving the stream cancels the worker's request.
                                return
                        return
                except CallError as exc:
                    # A worker at its queue bound refuses before doing anything: another
                    # worker may have room (when none has, the refusal becomes a 429).
                    refused = isinstance(exc, OverloadedError) and received == 0
                    if not (_worker_lost(exc) or refused):
                        raise
                    if stream.instance is not None:
                        failed.add(stream.instance.instance_id)
                    live = self.worker.instances("generate")
                    if not any(i.instance_id not in failed for i in live):
                        raise  # no other worker to resend to: retrying this one would not help
                    # Nothing came back yet: the request is simply sent elsewhere, which is
                    # routing around a dead instance, not a migration.
                    if received == 0 and len(failed) < MAX_REROUTES:
                        self.log.info("request %s: %s; rerouting", req.request_id, exc.message)
                        continue
                    if passed:
                        # The resend continues after the text the client already has: the
                        # prompt followed by that text, counted (and routed) with dyn's
                        # tokenizer. Tokenized here, once, rather than per delta.
                        so_far = "".join(passed)
                        continued = self.tokenizer.encode(so_far)
                        sent_tokens, sent_text = tokens + continued, req.prompt + so_far
                        done = len(continued)
                    else:
                        # Token ids continue exactly; an engine that needs text decodes them.
                        sent_tokens, sent_text = tokens + generated, None
                        done = len(generated)
                    if migrations >= self.config.migration_limit or done >= max_tokens:
                        raise
                    migrations += 1
                    self.metrics.migrations.inc()
                    self.log.info(
                        "request %s: %s; migrating after %d tokens (%d of %d)",
                        req.request_id,
                        exc.message,
                        done,
                        migrations,
                        self.config.migration_limit,
                    )
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def drain(self) -> None:
        """Wait for the requests in flight (the launcher has deregistered us already, so
        no new ones come); their workers drain after them."""
        if self._active:
            self.log.info("draining %d requests in flight", self._active)
        await self._idle.wait()

    def _logprobs(self, out: EngineOutput) -> list[OutputLogprob]:
        """The engine's logprobs with token ids spelled as the tokenizer's bytes."""
        spell = self.tokenizer.token_bytes
        return [
            OutputLogprob(
                token=spell(token),
                logprob=entry.logprob,
                top=[(spell(other), logprob) for other, logprob in entry.top],
            )
            for token, entry in zip(out.tokens, out.logprobs or (), strict=True)
        ]

    @endpoint
    async def router_sync(self, batch: SyncBatch, ctx: Context) -> AsyncIterator[SyncApplied]:
        """A peer replica's sync batch (:mod:`dyn.routing.kv.sync`); ignored when off."""
        if self.replicas is not None:
            self.replicas.receive(batch)
        yield SyncApplied(applied=self.replicas is not None)

    @endpoint
    async def route_info(self, request: Empty, ctx: Context) -> AsyncIterator[RouteInfo]:
        """The strategy in use, what it knows of each worker, which workers this
        processor's client has ejected (instance id → seconds of back-off left), and the
        ``dyn_migrations_total`` of its process (its own /metrics is not served when it
        runs in a process of its own)."""
        workers = self.worker.instances("generate")
        described = self.worker.router.describe()
        live = {i.instance_id for i in workers}
        yield RouteInfo(
            strategy=self.strategy,
            workers={
                worker: {**stats, **described.get(worker, {})}
                for worker, stats in self.worker_stats.items()
                if worker in live
            },
            instances=[
                {"instance_id": i.instance_id, "replica": i.replica, "node": i.node}
                for i in workers
            ],
            ejected=self.worker.ejected(),
            replica_sync=self.replicas.describe() if self.replicas is not None else None,
            migrations=self.runtime.registry.get_sample_value("dyn_migrations_total") or 0,
            kv_events=self._kv_plane.name,
        )

    @endpoint
    async def route_decisions(self, request: Empty, ctx: Context) -> AsyncIterator[RouteDecisions]:
        """The last routing decisions, newest first, with each candidate's overlap and cost
        for a strategy that weighs them (``GET /admin/route/decisions``)."""
        yield RouteDecisions(
            decisions=[decision.to_dict() for decision in self.decisions.recent()],
            recorded=self.decisions.recorded,
        )

    @endpoint
    async def set_strategy(
        self, request: StrategyRequest, ctx: Context
    ) -> AsyncIterator[StrategyReply]:
        """Switch the routing strategy live: ``{"strategy": NAME, "options": {...}}``."""
        try:
            self._install(request.strategy, request.options or {})
        except DynError as exc:
            raise BadRequestError(str(exc)) from exc
        self.log.info("routing strategy is now %s", self.strategy)
        yield StrategyReply(strategy=self.strategy)

    @endpoint
    async def explain(self, request: ExplainRequest, ctx: Context) -> AsyncIterator[Explanation]:
        """Score every worker for a prompt without sending anything: ``{"text": ...}``."""
        tokens = self.tokenizer.encode(request.text)
        candidates = self.worker.instances("generate")
        extra = {} if request.max_tokens is None else {"max_tokens": request.max_tokens}
        route = RouteRequest("explain", tokens=tokens, extra=extra)
        scores = self.worker.router.explain(candidates, route)
        yield Explanation(
            strategy=self.strategy,
            prompt_tokens=len(tokens),
            workers=[msgspec.to_builtins(score) for score in scores],
        )

    @endpoint
    async def clear_kv(self, request: Empty, ctx: Context) -> AsyncIterator[ClearAllReply]:
        """Drop every worker's cached blocks: ``{"cleared_blocks": N, "workers": W}``."""
        total = 0
        workers = self.worker.instances("clear_kv")
        for instance in workers:
            route = RouteRequest(
                request_id=f"clear-kv-{instance.instance_id}", instance_id=instance.instance_id
            )
            async with self.worker.stream(ENGINE_CLEAR_KV, Empty(), route=route) as replies:
                async for reply in replies:
                    total += reply.cleared_blocks
        yield ClearAllReply(cleared_blocks=total, workers=len(workers))


def _worker_lost(exc: CallError) -> bool:
    """Whether ``exc`` means the worker (or the way to it) is gone, so another may serve,
    as opposed to "the request is wrong"."""
    return isinstance(exc, TransportError)


def _usage(out: EngineOutput, prompt_tokens: int, done: int) -> TokenUsage | None:
    """The engine's own counts for the client, when it reports them (an upstream server).

    A resent request's upstream counted the text before the resend as prompt: then the
    prompt is dyn's count and that text dyn's count too, the rest the upstream's.
    """
    usage = out.usage
    if usage is None or done == 0:
        return usage
    return TokenUsage(prompt_tokens=prompt_tokens, completion_tokens=done + usage.completion_tokens)


def _cached(out: EngineOutput, first: bool, *, resent: bool) -> int | None:
    # On the first output from an engine; at the end from an upstream proxy, which only
    # learns it with the final usage. A resent request's prefix hits on its new worker
    # are its own continuation's, not the client's prompt's: they are not reported.
    if first:
        return out.cached_tokens
    if resent:
        return None
    return out.cached_tokens or None
