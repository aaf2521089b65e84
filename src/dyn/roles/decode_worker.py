"""The decode worker role: a worker that hands long prefills to prefill workers.

It serves everything :class:`~dyn.roles.worker.Worker` does (``generate``, ``kv_events``,
``clear_kv``, the same metadata), so processors and KV routers treat it as a worker.
Per request, ``generate`` applies the disaggregation rule (:mod:`dyn.disagg.rule`) to
the prompt's uncached length here and the prefill queue's depth. A remote prefill is
pushed to the ``prefill_queue`` as a job naming this instance; a prefill worker computes
it and calls this instance's ``kv_transfer`` with the blocks, which are then imported
into the cache (published as ``KvStored``) so that decoding starts with the whole prompt
cached. No transfer within ``remote_prefill_timeout_s``, a full queue or a dead queue:
the prefill runs here instead (or, with ``on_full_queue: reject``, a full queue refuses
the request with ``overloaded``). ``set_disagg`` changes the thresholds while serving,
for every decode worker: they are kept at the queue, which each one consults.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Literal, TypeVar, cast

import anyio
import msgspec

from dyn.context import Context
from dyn.contracts.base import EndpointRef
from dyn.contracts.disagg import (
    QUEUE_ACK,
    QUEUE_DEPTH,
    QUEUE_PUSH,
    QUEUE_SET_DISAGG,
    DepthRequest,
    DisaggSettings,
    DisaggThresholds,
    JobRef,
    KvTransfer,
    KvTransferReply,
    PrefillJob,
)
from dyn.disagg.rule import (
    DEFAULT_MAX_LOCAL_PREFILL_LENGTH,
    DEFAULT_MAX_PREFILL_QUEUE_SIZE,
    DisaggRule,
)
from dyn.disagg.transfer import KvTransferModel
from dyn.engines.base import EngineOutput, EngineRequest
from dyn.engines.unsupported import refuse_unsupported_fields
from dyn.errors import CallError, DynError, OverloadedError, RemoteError
from dyn.kv.hashing import local_block_hashes, sequence_hashes
from dyn.observability.disagg_metrics import DisaggMetrics
from dyn.roles.worker import Worker, WorkerConfig
from dyn.routing.base import RouteRequest
from dyn.runtime.component import Component, depends, endpoint

__all__ = ["DecodeWorker", "DecodeWorkerConfig"]

ReqT = TypeVar("ReqT")
ItemT = TypeVar("ItemT")

# Bound on the queue calls a request makes before falling back to a local prefill.
QUEUE_CALL_TIMEOUT_S = 2.0
# How often a decode worker refreshes the thresholds kept at the queue.
SETTINGS_POLL_S = 0.5


class DecodeWorkerConfig(WorkerConfig, forbid_unknown_fields=True, frozen=True):
    """A worker's settings plus the disaggregation ones."""

    max_local_prefill_length: Annotated[int, msgspec.Meta(ge=0)] = DEFAULT_MAX_LOCAL_PREFILL_LENGTH
    max_prefill_queue_size: Annotated[int, msgspec.Meta(ge=0)] = DEFAULT_MAX_PREFILL_QUEUE_SIZE
    remote_prefill_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    on_full_queue: Literal["local", "reject"] = "local"
    kv_transfer: KvTransferModel = msgspec.field(default_factory=KvTransferModel)


@dataclass(eq=False)
class _Pending:
    """A request waiting for its remote prefill's blocks."""

    block_hashes: list[int]
    arrived: anyio.Event = field(default_factory=anyio.Event)
    blocks: int = 0


class DecodeWorker(Worker, Component[DecodeWorkerConfig]):
    # Component[...] named again so the graph validates this role's own config type.
    prefill_queue = depends(calls=(QUEUE_DEPTH, QUEUE_PUSH, QUEUE_ACK, QUEUE_SET_DISAGG))

    async def start(self) -> None:
        await super().start()
        config = cast(DecodeWorkerConfig, self.config)
        self.settings = config
        self.rule = DisaggRule(config.max_local_prefill_length, config.max_prefill_queue_size)
        # Sent with every depth call, so the queue can show the thresholds in force here.
        self._depth_request = DepthRequest(
            instance_id=self.info.instance_id,
            configured=DisaggThresholds(
                max_local_prefill_length=config.max_local_prefill_length,
                max_prefill_queue_size=config.max_prefill_queue_size,
            ),
        )
        self.disagg_metrics = DisaggMetrics.of(self.runtime.registry)
        self._pending: dict[str, _Pending] = {}

    @endpoint
    async def generate(self, req: EngineRequest, ctx: Context) -> AsyncIterator[EngineOutput]:
        self.refuse_if_full()  # before a remote prefill that would be wasted
        if req.extra_fields:
            refuse_unsupported_fields(req.extra_fields)
        location = "local"
        if await self._wants_remote(req) and await self._prefill_remote(req):
            location = "remote"
            # Nothing awaits between the import and the engine taking the request (the
            # first step of the generator below), so the blocks are still cached when the
            # request is admitted: its prompt is a prefix hit, as `cached_tokens` shows.
            self.engine.import_blocks(req.tokens)
        self.disagg_metrics.prefills.labels(location).inc()
        async for output in super().generate(req, ctx):
            yield output

    async def _wants_remote(self, req: EngineRequest) -> bool:
        prompt_len = len(req.tokens)
        if prompt_len <= self.rule.max_local_prefill_length:
            return False  # the common case asks the queue nothing
        cached = self.engine.core.cached_prefix_tokens(req.tokens)
        depth = await self._queue_depth()
        if depth is None:
            return False
        return self.rule.prefill_remote(prompt_len, cached / prompt_len, depth)

    async def _queue_depth(self) -> int | None:
        try:
            return await self._refresh()
        except (DynError, TimeoutError) as exc:
            self.log.warning("prefill queue unreachable, prefilling locally: %s", exc)
            self.disagg_metrics.remote_fallbacks.labels("queue_unreachable").inc()
            return None

    async def run(self) -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(super().run)
            while True:
                # Short prompts never ask the queue, so follow its thresholds here too
                # (and tell the queue, at once, which thresholds this worker applies).
                with contextlib.suppress(DynError, TimeoutError):
                    await self._refresh()
                await anyio.sleep(SETTINGS_POLL_S)

    async def _refresh(self) -> int:
        """The queue's depth; adopts the thresholds kept there on the way."""
        with anyio.fail_after(QUEUE_CALL_TIMEOUT_S):
            reply = await self._queue_call(QUEUE_DEPTH, self._depth_request)
        self.rule.update(**reply.overrides)
        return reply.depth

    async def _queue_call(self, ref: EndpointRef[ReqT, ItemT], payload: ReqT) -> ItemT:
        route = RouteRequest(request_id=f"{ref.name}-{time.monotonic_ns()}")
        async with self.prefill_queue.stream(ref, payload, route=route) as replies:
            async for reply in replies:
                return reply
        raise RemoteError(f"prefill queue {ref.name} answered nothing")

    async def _prefill_remote(self, req: EngineRequest) -> bool:
        """Have a prefill worker compute the prompt; True once its blocks arrived."""
        block_size = self.settings.block_size
        hashes = sequence_hashes(local_block_hashes(req.tokens, block_size))
        job = PrefillJob(
            request_id=req.request_id,
            tokens=req.tokens,
            block_hashes=hashes,
            block_size=block_size,
            decode_instance_id=self.info.instance_id,
        )
        pending = self._pending[req.request_id] = _Pending(block_hashes=hashes)
        started = time.perf_counter()
        job_id: str | None = None
        try:
            job_id = await self._push(job)
            if job_id is None:
                return False
            with anyio.move_on_after(self.settings.remote_prefill_timeout_s):
                await pending.arrived.wait()
            if pending.arrived.is_set():
                self.disagg_metrics.prefill_wait.observe(time.perf_counter() - started)
                return True
            self.log.warning(
                "no remote prefill for %s within %.1f s; prefilling locally",
                req.request_id,
                self.settings.remote_prefill_timeout_s,
            )
            self.disagg_metrics.remote_fallbacks.labels("timeout").inc()
            return False
        finally:
            del self._pending[req.request_id]
            if job_id is not None and not pending.arrived.is_set():
                # Timed out or cancelled: take the job away so no prefill worker runs it
                # (one already running it finds nobody waiting and drops its result).
                with anyio.CancelScope(shield=True):
                    await self._drop_job(job_id)

    async def _push(self, job: PrefillJob) -> str | None:
        """Enqueue the job; None to prefill locally instead (full or unreachable queue)."""
        try:
            with anyio.fail_after(QUEUE_CALL_TIMEOUT_S):
                return (await self._queue_call(QUEUE_PUSH, job)).job_id
        except CallError as exc:
            if not isinstance(exc, OverloadedError):
                self.log.warning("prefill queue push failed, prefilling locally: %s", exc)
                self.disagg_metrics.remote_fallbacks.labels("queue_error").inc()
                return None
            if self.settings.on_full_queue == "reject":
                self.disagg_metrics.rejected.inc()
                raise OverloadedError("the prefill queue is full; retry later") from exc
            self.disagg_metrics.remote_fallbacks.labels("queue_full").inc()
            return None
        except (DynError, TimeoutError) as exc:
            self.log.warning("prefill queue push failed, prefilling locally: %s", exc)
            self.disagg_metrics.remote_fallbacks.labels("queue_error").inc()
            return None

    async def _drop_job(self, job_id: str) -> None:
        try:
            with anyio.move_on_after(QUEUE_CALL_TIMEOUT_S):
                await self._queue_call(QUEUE_ACK, JobRef(job_id=job_id))
        except DynError as exc:
            self.log.debug("could not drop prefill job %s: %s", job_id, exc)

    @endpoint
    async def kv_transfer(
        self, request: KvTransfer, ctx: Context
    ) -> AsyncIterator[KvTransferReply]:
        """A prefill worker delivers ``{"request_id", "block_hashes"}``; the blocks must
        be the ones this request's prompt needs (a mismatch is refused, not imported)."""
        pending = self._pending.get(request.request_id)
        if pending is None or pending.arrived.is_set():
            yield KvTransferReply(accepted=False, reason="no request waits for these blocks")
            return
        received = request.block_hashes
        if received != pending.block_hashes:
            yield KvTransferReply(accepted=False, reason="block hashes do not match the prompt")
            return
        pending.blocks = len(received)
        pending.arrived.set()
        yield KvTransferReply(accepted=True, blocks=len(received))

    @endpoint
    async def set_disagg(
        self, request: DisaggSettings, ctx: Context
    ) -> AsyncIterator[DisaggThresholds]:
        """Change the thresholds of every decode worker: they are kept at the queue."""
        self.rule.update(**request.given())
        await self._queue_call(QUEUE_SET_DISAGG, request)
        yield DisaggThresholds(
            max_local_prefill_length=self.rule.max_local_prefill_length,
            max_prefill_queue_size=self.rule.max_prefill_queue_size,
        )
