"""The prefill worker role: pulls prefill jobs, computes them, ships the KV blocks.

Each of ``max_concurrent_jobs`` pullers long-polls the ``prefill_queue``, runs the
job's prompt through this worker's own simulated engine (a one-token generation, so it
costs exactly the engine's prefill time and leaves the prompt in this cache for later
prefix hits), "transfers" the blocks under the :class:`~dyn.disagg.transfer.KvTransferModel`
(a sleep of the modelled time) and hands their hashes to the decode worker named in the
job through its ``kv_transfer`` endpoint. The job is acked only then: a prefill worker
that dies holding one lets its lease expire and another worker gets it. A job whose lease
is gone (its decode worker dropped it when the client left, or it expired and went to
another worker) is abandoned at the next renewal, freeing this worker's engine.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypeVar

import anyio
import msgspec

from dyn.context import Context
from dyn.contracts.base import Empty, EndpointRef
from dyn.contracts.disagg import (
    DECODE_KV_TRANSFER,
    QUEUE_ACK,
    QUEUE_PULL,
    QUEUE_TOUCH,
    JobRef,
    KvTransfer,
    LeasedJob,
    PrefillJob,
    PullRequest,
)
from dyn.disagg.transfer import KvTransferModel
from dyn.engines.base import EngineRequest
from dyn.engines.mocker import MockerConfig, MockerEngine
from dyn.errors import DynError
from dyn.kv.events import WorkerUpdate
from dyn.kv.hashing import local_block_hashes, sequence_hashes
from dyn.observability.disagg_metrics import DisaggMetrics
from dyn.roles.worker import mocker_token_limit
from dyn.routing.base import RouteRequest
from dyn.runtime.component import Component, depends, endpoint
from dyn.tokenizer import load_tokenizer

__all__ = ["PrefillJob", "PrefillWorker", "PrefillWorkerConfig"]

ReqT = TypeVar("ReqT")
ItemT = TypeVar("ItemT")

# Pause after a failed pull (queue restarting or gone) before polling again.
RETRY_DELAY_S = 0.5
# Bound on one call to the queue or to a decode worker.
CALL_TIMEOUT_S = 10.0
# Longest pause between two lease renewals: how soon a job whose request went away is
# abandoned (the issue asks for a cancelled request to free every worker within 1 s).
LEASE_CHECK_S = 0.25


class PrefillWorkerConfig(MockerConfig, forbid_unknown_fields=True, frozen=True):
    """The mocker's settings plus how jobs are taken and blocks moved."""

    max_concurrent_jobs: Annotated[int, msgspec.Meta(gt=0)] = 4
    pull_wait_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    kv_transfer: KvTransferModel = msgspec.field(default_factory=KvTransferModel)


class PrefillWorker(Component[PrefillWorkerConfig]):
    prefill_queue = depends(calls=(QUEUE_PULL, QUEUE_ACK, QUEUE_TOUCH))
    # The decode workers, called by instance id.
    worker = depends(calls=(DECODE_KV_TRANSFER,))

    @classmethod
    def request_token_limit(cls, config: PrefillWorkerConfig) -> tuple[int, str] | None:
        return mocker_token_limit(config)

    def metadata(self) -> dict[str, Any]:
        return {"block_size": self.config.block_size, "total_blocks": self.config.num_gpu_blocks}

    async def start(self) -> None:
        tokenizer = load_tokenizer(self.model.tokenizer if self.model else None)
        engine_fields = {
            name: getattr(self.config, name) for name in MockerConfig.__struct_fields__
        }
        engine_fields.update(vocab_size=tokenizer.vocab_size, eos_token_id=tokenizer.eos_token_id)
        self.engine = MockerEngine(MockerConfig(**engine_fields))
        self.metrics = DisaggMetrics.of(self.runtime.registry)
        self._draining = False
        self.jobs_done = 0
        self.jobs_in_progress = 0

    async def run(self) -> None:
        async with anyio.create_task_group() as tasks:
            await tasks.start(self.engine.run)
            for _ in range(self.config.max_concurrent_jobs):
                tasks.start_soon(self._puller)

    async def drain(self) -> None:
        self._draining = True

    async def _puller(self) -> None:
        while not self._draining:
            try:
                lease = await self._pull()
            except (DynError, TimeoutError) as exc:
                self.log.debug("pull failed: %s", exc)
                await anyio.sleep(RETRY_DELAY_S)
                continue
            if lease is not None:
                await self._work(lease)

    async def _pull(self) -> LeasedJob | None:
        wait_s = self.config.pull_wait_s
        route = RouteRequest(request_id=f"pull-{self.info.instance_id}-{time.monotonic_ns()}")
        request = PullRequest(wait_s=wait_s)
        with anyio.fail_after(wait_s + CALL_TIMEOUT_S):
            async with self.prefill_queue.stream(QUEUE_PULL, request, route=route) as items:
                async for item in items:
                    return item
        return None

    async def _work(self, lease: LeasedJob) -> None:
        # The queue checked the job when it was pushed.
        job_id, job = lease.job_id, lease.payload
        self.log.info("prefilling job %s (request %s)", job_id, job.request_id)
        lost = anyio.Event()
        self.jobs_in_progress += 1
        try:
            async with anyio.create_task_group() as tasks:
                # Renew the lease while working, so that a slow prefill is not handed to a
                # second worker; only a dead (or hung) worker lets it lapse.
                tasks.start_soon(self._keep_lease, job_id, lease.lease_s, lost, tasks.cancel_scope)
                await self._compute_and_ship(job_id, lease, job)
                tasks.cancel_scope.cancel()
        finally:
            self.jobs_in_progress -= 1
        if lost.is_set():
            return  # nothing to ack: the job is gone, or another worker's now
        try:
            await self._queue_call(QUEUE_ACK, JobRef(job_id=job_id))
        except (DynError, TimeoutError) as exc:
            self.log.warning("could not ack prefill job %s: %s", job_id, exc)

    async def _keep_lease(
        self, job_id: str, lease_s: float, lost: anyio.Event, work: anyio.CancelScope
    ) -> None:
        """Renew the lease until cancelled; once it is gone, set ``lost`` and cancel
        ``work``: nobody waits for this prefill any more, or another worker makes it."""
        while True:
            await anyio.sleep(max(min(lease_s / 3, LEASE_CHECK_S), 0.01))
            try:
                reply = await self._queue_call(QUEUE_TOUCH, JobRef(job_id=job_id))
            except (DynError, TimeoutError):
                continue  # the queue is unreachable: keep working, it may come back
            if reply is not None and not reply.leased:
                self.log.info("prefill job %s is no longer ours; abandoning it", job_id)
                lost.set()
                work.cancel()
                return

    async def _compute_and_ship(self, job_id: str, lease: LeasedJob, job: PrefillJob) -> None:
        try:
            hashes = await self._prefill(job, f"{job_id}-{lease.delivery}")
            started = time.perf_counter()
            await anyio.sleep(
                self.config.kv_transfer.seconds(len(hashes), self.config.speedup_ratio)
            )
            accepted = await self._deliver(job, hashes)
            self.metrics.kv_transfer.observe(time.perf_counter() - started)
            if not accepted:
                self.log.info("request %s no longer waits for its prefill", job.request_id)
        except DynError as exc:
            # The decode worker is gone or refused: nobody can use this prefill.
            self.log.warning("prefill job %s failed: %s", job_id, exc)
        self.jobs_done += 1

    async def _prefill(self, job: PrefillJob, engine_request_id: str) -> list[int]:
        """Compute the prompt here; the hashes of its full blocks, now in this cache."""
        request = EngineRequest(
            request_id=engine_request_id, tokens=job.tokens, max_tokens=1, ignore_eos=True
        )
        async for _ in self.engine.generate(request):
            pass
        return sequence_hashes(local_block_hashes(job.tokens, job.block_size))

    async def _deliver(self, job: PrefillJob, hashes: list[int]) -> bool:
        route = RouteRequest(
            request_id=f"kv-transfer-{job.request_id}", instance_id=job.decode_instance_id
        )
        payload = KvTransfer(request_id=job.request_id, block_hashes=hashes)
        with anyio.fail_after(CALL_TIMEOUT_S):
            async with self.worker.stream(DECODE_KV_TRANSFER, payload, route=route) as replies:
                async for reply in replies:
                    return reply.accepted
        return False

    async def _queue_call(self, ref: EndpointRef[ReqT, ItemT], payload: ReqT) -> ItemT | None:
        """The queue's (last) reply to one call; None if it answered nothing."""
        route = RouteRequest(request_id=f"{ref.name}-{time.monotonic_ns()}")
        reply: ItemT | None = None
        with anyio.fail_after(CALL_TIMEOUT_S):
            async with self.prefill_queue.stream(ref, payload, route=route) as replies:
                async for item in replies:
                    reply = item
        return reply

    @endpoint
    async def kv_events(self, request: Empty, ctx: Context) -> AsyncIterator[WorkerUpdate]:
        """This worker's own cache, for observation (no router routes to it)."""
        async for update in self.engine.subscribe():
            yield update
