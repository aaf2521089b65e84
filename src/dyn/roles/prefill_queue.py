"""The prefill queue role: a bounded work queue with leases, served over the runtime.

Endpoints: ``push`` (a job → ``{"job_id"}``; refused with code ``overloaded`` when
full), ``pull`` (waits up to ``wait_s`` for a job and yields it as a leased ``{"job_id",
"payload", "delivery", "lease_s"}``, or yields nothing), ``ack`` and ``nack`` (by job
id), ``touch`` (renew a lease while working), ``depth``, and ``set_disagg``: the one
place the disaggregation thresholds are changed while serving, since every decode worker
consults the queue (``depth`` carries them) and the queue has one instance. Each decode
worker's ``depth`` call names the thresholds of its own config, so ``depth`` and
``set_disagg`` both answer with the thresholds in force, not only those set. A job not
acked within ``visibility_timeout_s`` goes back to the front of the queue. The
bookkeeping is :class:`dyn.disagg.queue.PrefillQueue`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Annotated

import anyio
import msgspec

from dyn.context import Context
from dyn.contracts.disagg import (
    Acked,
    DepthRequest,
    DisaggSettings,
    DisaggThresholds,
    JobRef,
    LeasedJob,
    LeaseState,
    Nacked,
    PrefillJob,
    PullRequest,
    Pushed,
    QueueDepth,
)
from dyn.disagg.queue import PrefillQueue, QueueFull
from dyn.errors import OverloadedError
from dyn.observability.disagg_metrics import PrefillQueueMetrics
from dyn.runtime.component import Component, endpoint

__all__ = ["DISAGG_KEYS", "PrefillQueueConfig", "PrefillQueueRole"]

# A puller's longest wait per call: it calls again, so a dead queue is noticed this soon.
MAX_PULL_WAIT_S = 30.0
# A decode worker asks for the depth every 0.5 s at least (decode_worker.SETTINGS_POLL_S);
# one silent this long has stopped, and its thresholds no longer count.
DECODE_WORKER_TTL_S = 5.0


class PrefillQueueConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # A hard bound on jobs held (ready + leased); the disaggregation rule's
    # max_prefill_queue_size normally keeps the queue far shorter.
    max_size: Annotated[int, msgspec.Meta(gt=0)] = 64
    visibility_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    max_deliveries: Annotated[int, msgspec.Meta(gt=0)] = 5


class PrefillQueueRole(Component[PrefillQueueConfig]):
    """One in-memory queue; its state dies with the process (use several decode workers'
    timeouts, or a durable backend, where that matters)."""

    async def start(self) -> None:
        config = self.config
        self.queue = PrefillQueue(
            config.max_size, config.visibility_timeout_s, config.max_deliveries
        )
        self.metrics = PrefillQueueMetrics.of(self.runtime.registry)
        self._changed = anyio.Event()
        # Thresholds set while serving; unset ones leave each decode worker's own config.
        self.disagg: dict[str, int] = {}
        # Each decode worker's own config thresholds, and when it last said so.
        self._configured: dict[str, tuple[DisaggThresholds, float]] = {}
        self._publish()

    def _publish(self) -> None:
        """Update the metrics and wake waiting pullers after any change."""
        self.metrics.depth.set(self.queue.depth)
        self._changed.set()
        self._changed = anyio.Event()

    def _expire(self) -> None:
        redelivered = self.queue.expire(anyio.current_time())
        if redelivered:
            self.metrics.redelivered.inc(redelivered)
            self.log.info("%d prefill job(s) redelivered after their lease expired", redelivered)
            self._publish()

    @endpoint
    async def push(self, job: PrefillJob, ctx: Context) -> AsyncIterator[Pushed]:
        try:
            job_id = self.queue.push(job, anyio.current_time())
        except QueueFull as exc:
            raise OverloadedError(str(exc)) from exc
        self._publish()
        yield Pushed(job_id=job_id, depth=self.queue.depth)

    @endpoint
    async def pull(self, request: PullRequest, ctx: Context) -> AsyncIterator[LeasedJob]:
        give_up = anyio.current_time() + min(max(request.wait_s, 0.0), MAX_PULL_WAIT_S)
        while True:
            now = anyio.current_time()
            self._expire()
            lease = self.queue.pull(now)
            if lease is not None:
                self._publish()
                yield LeasedJob(
                    job_id=lease.job_id,
                    payload=lease.payload,
                    delivery=lease.delivery,
                    lease_s=lease.deadline - now,
                )
                return
            wake = give_up
            next_expiry = self.queue.next_deadline()
            if next_expiry is not None:
                wake = min(wake, next_expiry)
            if now >= give_up:
                return
            with anyio.move_on_after(max(0.0, wake - now)):
                await self._changed.wait()

    @endpoint
    async def ack(self, request: JobRef, ctx: Context) -> AsyncIterator[Acked]:
        acked = self.queue.ack(request.job_id)
        self._publish()
        yield Acked(acked=acked)

    @endpoint
    async def touch(self, request: JobRef, ctx: Context) -> AsyncIterator[LeaseState]:
        """Renew a lease: ``{"leased": bool}`` (false: it expired and went to another)."""
        deadline = self.queue.touch(request.job_id, anyio.current_time())
        yield LeaseState(leased=deadline is not None)

    @endpoint
    async def nack(self, request: JobRef, ctx: Context) -> AsyncIterator[Nacked]:
        nacked = self.queue.nack(request.job_id)
        self._publish()
        yield Nacked(nacked=nacked)

    @endpoint
    async def depth(self, request: DepthRequest, ctx: Context) -> AsyncIterator[QueueDepth]:
        """The queue's state (``{}`` from an operator); a decode worker also names itself."""
        self._expire()
        if request.instance_id is not None and request.configured is not None:
            self._configured[request.instance_id] = (request.configured, anyio.current_time())
        yield self._state()

    @endpoint
    async def set_disagg(self, request: DisaggSettings, ctx: Context) -> AsyncIterator[QueueDepth]:
        """``{"max_local_prefill_length"?: N, "max_prefill_queue_size"?: N}``; answers with
        the queue's state, every threshold now in force included."""
        self.disagg = {**self.disagg, **request.given()}
        state = self._state()
        self.log.info("disaggregation thresholds now %s (set: %s)", state.thresholds, self.disagg)
        yield state

    def _state(self) -> QueueDepth:
        queue = self.queue
        in_force = self._thresholds_in_force()
        return QueueDepth(
            depth=queue.depth,
            ready=queue.ready,
            leased=queue.leased,
            overrides=self.disagg,
            thresholds=_common(in_force.values(), self.disagg),
            decode_workers=in_force,
            max_size=queue.max_size,
            visibility_timeout_s=queue.visibility_timeout_s,
            max_deliveries=queue.max_deliveries,
            redelivered_total=queue.redelivered_total,
            dropped_total=queue.dropped_total,
        )

    def _thresholds_in_force(self) -> dict[str, DisaggThresholds]:
        """Each live decode worker's thresholds: the overrides over its own config."""
        oldest = anyio.current_time() - DECODE_WORKER_TTL_S
        for instance_id, (_, seen) in list(self._configured.items()):
            if seen < oldest:
                del self._configured[instance_id]
        return {
            instance_id: msgspec.structs.replace(configured, **self.disagg)
            for instance_id, (configured, _) in sorted(self._configured.items())
        }


def _common(workers: Iterable[DisaggThresholds], overrides: dict[str, int]) -> dict[str, int]:
    """The thresholds every decode worker shares (the overrides when none has reported)."""
    common: dict[str, int] | None = None
    for thresholds in workers:
        values = msgspec.structs.asdict(thresholds)
        if common is None:
            common = values
        else:
            common = {k: v for k, v in common.items() if values.get(k) == v}
    return dict(overrides) if common is None else common


DISAGG_KEYS = tuple(DisaggSettings.__struct_fields__)
