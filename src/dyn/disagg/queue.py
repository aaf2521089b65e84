"""The prefill queue's bookkeeping: bounded, leased, redelivering. No I/O, no clock.

A job is *ready* until a puller takes it, then *leased* until the puller acks it (done,
removed), nacks it (ready again, at the front) or its lease expires without a renewal
(``touch``): the puller died or hung, so the job is ready again, at the front. Like a
JetStream work queue with ``ack_wait`` (docs/disaggregation.md), a job is acked only after its
prefill is done, so a dying prefill worker loses no job; one delivered
``max_deliveries`` times is dropped, so a job that crashes every worker cannot circulate
forever (its decode worker then prefills locally). The size bound counts leased jobs
too, as a JetStream stream's ``max_msgs`` does.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

__all__ = ["Lease", "PrefillQueue", "QueueFull"]


class QueueFull(Exception):
    """The queue holds ``max_size`` jobs already; the caller must go elsewhere."""


@dataclass(slots=True)
class _Job:
    job_id: str
    payload: Any
    deliveries: int = 0
    lease_deadline: float = 0.0


@dataclass(frozen=True, slots=True)
class Lease:
    """A job handed to a puller, which must ack it before ``deadline``."""

    job_id: str
    payload: Any
    delivery: int  # 1 on the first delivery
    deadline: float


class PrefillQueue:
    """Jobs in FIFO order; ``now`` comes from the caller's clock."""

    def __init__(self, max_size: int, visibility_timeout_s: float, max_deliveries: int = 5) -> None:
        if max_size < 1 or visibility_timeout_s <= 0 or max_deliveries < 1:
            raise ValueError("max_size, visibility_timeout_s and max_deliveries must be > 0")
        self.max_size = max_size
        self.visibility_timeout_s = visibility_timeout_s
        self.max_deliveries = max_deliveries
        self.redelivered_total = 0
        self.dropped_total = 0
        self._ready: deque[_Job] = deque()
        self._leased: OrderedDict[str, _Job] = OrderedDict()  # earliest deadline first
        self._jobs: dict[str, _Job] = {}
        self._ids = itertools.count(1)

    @property
    def depth(self) -> int:
        """Jobs not yet acked: ready plus leased."""
        return len(self._jobs)

    @property
    def ready(self) -> int:
        return len(self._ready)

    @property
    def leased(self) -> int:
        return len(self._leased)

    def push(self, payload: Any, now: float) -> str:
        """Enqueue a job and return its id; :class:`QueueFull` at ``max_size``."""
        self.expire(now)
        if len(self._jobs) >= self.max_size:
            raise QueueFull(f"the prefill queue is full ({self.max_size} jobs)")
        job = _Job(job_id=f"job-{next(self._ids)}", payload=payload)
        self._jobs[job.job_id] = job
        self._ready.append(job)
        return job.job_id

    def pull(self, now: float) -> Lease | None:
        """Lease the oldest ready job until ``now + visibility_timeout_s``; None if none."""
        self.expire(now)
        if not self._ready:
            return None
        job = self._ready.popleft()
        job.deliveries += 1
        job.lease_deadline = now + self.visibility_timeout_s
        self._leased[job.job_id] = job
        return Lease(job.job_id, job.payload, job.deliveries, job.lease_deadline)

    def ack(self, job_id: str) -> bool:
        """Remove a job, leased or not (done, or its request went away); False if unknown."""
        job = self._jobs.pop(job_id, None)
        if job is None:
            return False
        if self._leased.pop(job_id, None) is None:
            self._ready.remove(job)
        return True

    def touch(self, job_id: str, now: float) -> float | None:
        """Extend a lease by ``visibility_timeout_s`` from ``now`` (the puller is still at
        work, JetStream's "in progress" ack); the new deadline, or None if not leased."""
        job = self._leased.pop(job_id, None)
        if job is None:
            return None
        job.lease_deadline = now + self.visibility_timeout_s
        self._leased[job_id] = job  # to the end: the latest deadline
        return job.lease_deadline

    def nack(self, job_id: str) -> bool:
        """Hand a leased job back for another puller now; False if it is not leased."""
        job = self._leased.pop(job_id, None)
        if job is None:
            return False
        self._requeue(job)
        return True

    def expire(self, now: float) -> int:
        """Return every lease past its deadline to the front of the queue; how many."""
        expired = 0
        while self._leased:
            job = next(iter(self._leased.values()))
            if job.lease_deadline > now:
                break
            del self._leased[job.job_id]
            self._requeue(job)
            self.redelivered_total += 1
            expired += 1
        return expired

    def next_deadline(self) -> float | None:
        """When the earliest lease expires, for a puller waiting on an empty queue."""
        if not self._leased:
            return None
        return next(iter(self._leased.values())).lease_deadline

    def _requeue(self, job: _Job) -> None:
        if job.deliveries >= self.max_deliveries:
            del self._jobs[job.job_id]
            self.dropped_total += 1
        else:
            self._ready.appendleft(job)
