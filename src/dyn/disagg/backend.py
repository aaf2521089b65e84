"""Where the prefill queue's jobs are kept: the role serves one of these backends.

Both keep the contract of docs/disaggregation.md (bounded, leased, redelivered at most
``max_deliveries`` times, acked after the work, ``ack`` of a ready job takes it away):
``memory`` in the role's process (:class:`~dyn.disagg.queue.PrefillQueue`), ``jetstream``
in a NATS JetStream work-queue stream (:mod:`dyn.disagg.jetstream`), which outlives it.
"""

from __future__ import annotations

from typing import Protocol

import anyio
import msgspec

from dyn.contracts.disagg import LeasedJob, PrefillJob
from dyn.disagg.queue import PrefillQueue, QueueFull

__all__ = ["MemoryBackend", "QueueBackend", "QueueFull", "QueueStats"]


class QueueStats(msgspec.Struct, frozen=True):
    depth: int  # not yet acked: ready + leased
    ready: int
    leased: int
    max_size: int
    visibility_timeout_s: float
    max_deliveries: int
    redelivered_total: int  # leases that lapsed
    dropped_total: int  # jobs dropped after max_deliveries


class QueueBackend(Protocol):
    async def push(self, job: PrefillJob) -> str:
        """Enqueue; the job's id. Raises :class:`QueueFull` at the bound."""
        ...

    async def pull(self, wait_s: float) -> LeasedJob | None:
        """The oldest ready job, leased; None if none came within ``wait_s``."""
        ...

    async def ack(self, job_id: str) -> bool:
        """Remove a job, leased or ready; False if unknown."""
        ...

    async def touch(self, job_id: str) -> bool:
        """Renew a lease; False if the job is no longer leased."""
        ...

    async def nack(self, job_id: str) -> bool:
        """Hand a leased job back now; False if it is not leased."""
        ...

    async def stats(self) -> QueueStats: ...

    async def close(self) -> None: ...


class MemoryBackend:
    """The in-process queue; its jobs die with the process."""

    def __init__(self, max_size: int, visibility_timeout_s: float, max_deliveries: int) -> None:
        self.queue = PrefillQueue(max_size, visibility_timeout_s, max_deliveries)
        self._changed = anyio.Event()

    def _wake(self) -> None:
        """Wake waiting pullers after any change."""
        self._changed.set()
        self._changed = anyio.Event()

    def _expire(self) -> None:
        if self.queue.expire(anyio.current_time()):
            self._wake()

    async def push(self, job: PrefillJob) -> str:
        job_id = self.queue.push(job, anyio.current_time())
        self._wake()
        return job_id

    async def pull(self, wait_s: float) -> LeasedJob | None:
        give_up = anyio.current_time() + wait_s
        while True:
            now = anyio.current_time()
            self._expire()
            lease = self.queue.pull(now)
            if lease is not None:
                self._wake()
                return LeasedJob(
                    job_id=lease.job_id,
                    payload=lease.payload,
                    delivery=lease.delivery,
                    lease_s=lease.deadline - now,
                )
            wake = give_up
            next_expiry = self.queue.next_deadline()
            if next_expiry is not None:
                wake = min(wake, next_expiry)
            if now >= give_up:
                return None
            with anyio.move_on_after(max(0.0, wake - now)):
                await self._changed.wait()

    async def ack(self, job_id: str) -> bool:
        acked = self.queue.ack(job_id)
        self._wake()
        return acked

    async def touch(self, job_id: str) -> bool:
        return self.queue.touch(job_id, anyio.current_time()) is not None

    async def nack(self, job_id: str) -> bool:
        nacked = self.queue.nack(job_id)
        self._wake()
        return nacked

    async def stats(self) -> QueueStats:
        self._expire()
        queue = self.queue
        return QueueStats(
            depth=queue.depth,
            ready=queue.ready,
            leased=queue.leased,
            max_size=queue.max_size,
            visibility_timeout_s=queue.visibility_timeout_s,
            max_deliveries=queue.max_deliveries,
            redelivered_total=queue.redelivered_total,
            dropped_total=queue.dropped_total,
        )

    async def close(self) -> None:
        pass
