"""The prefill queue role: a bounded work queue with leases, served over the runtime.

Endpoints: ``push`` (a job → ``{"job_id"}``; refused with code ``overloaded`` when
full), ``pull`` (waits up to ``wait_s`` for a job and yields it as a leased ``{"job_id",
"payload", "delivery", "lease_s"}``, or yields nothing), ``ack`` and ``nack`` (by job
id), ``touch`` (renew a lease while working), ``depth``, and ``set_disagg``: the one
place the disaggregation thresholds are changed while serving, since every decode worker
consults the queue (``depth`` carries them) and the queue has one instance. A job not
acked within ``visibility_timeout_s`` goes back to the front of the queue. The
bookkeeping is :class:`dyn.disagg.queue.PrefillQueue`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import msgspec

from dyn.context import Context
from dyn.disagg.queue import PrefillQueue, QueueFull
from dyn.errors import BadRequestError, OverloadedError
from dyn.observability.disagg_metrics import PrefillQueueMetrics
from dyn.runtime.component import Component, endpoint

__all__ = ["DISAGG_KEYS", "PrefillQueueConfig", "PrefillQueueRole", "disagg_settings"]

# A puller's longest wait per call: it calls again, so a dead queue is noticed this soon.
MAX_PULL_WAIT_S = 30.0


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
    async def push(self, request: Any, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        try:
            job_id = self.queue.push(request, anyio.current_time())
        except QueueFull as exc:
            raise OverloadedError(str(exc)) from exc
        self._publish()
        yield {"job_id": job_id, "depth": self.queue.depth}

    @endpoint
    async def pull(self, request: Any, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        wait_s = _number(request, "wait_s", 5.0)
        give_up = anyio.current_time() + min(max(wait_s, 0.0), MAX_PULL_WAIT_S)
        while True:
            now = anyio.current_time()
            self._expire()
            lease = self.queue.pull(now)
            if lease is not None:
                self._publish()
                yield {
                    "job_id": lease.job_id,
                    "payload": lease.payload,
                    "delivery": lease.delivery,
                    "lease_s": lease.deadline - now,
                }
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
    async def ack(self, request: Any, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        acked = self.queue.ack(_job_id(request))
        self._publish()
        yield {"acked": acked}

    @endpoint
    async def touch(self, request: Any, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        """Renew a lease: ``{"leased": bool}`` (false: it expired and went to another)."""
        deadline = self.queue.touch(_job_id(request), anyio.current_time())
        yield {"leased": deadline is not None}

    @endpoint
    async def nack(self, request: Any, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        nacked = self.queue.nack(_job_id(request))
        self._publish()
        yield {"nacked": nacked}

    @endpoint
    async def depth(self, request: Any, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        self._expire()
        queue = self.queue
        yield {
            "depth": queue.depth,
            "ready": queue.ready,
            "leased": queue.leased,
            "disagg": self.disagg,
        }

    @endpoint
    async def set_disagg(self, request: Any, ctx: Context) -> AsyncIterator[dict[str, Any]]:
        """``{"max_local_prefill_length"?: N, "max_prefill_queue_size"?: N}``."""
        self.disagg = {**self.disagg, **disagg_settings(request)}
        self.log.info("disaggregation thresholds now %s", self.disagg)
        yield dict(self.disagg)


DISAGG_KEYS = ("max_local_prefill_length", "max_prefill_queue_size")


def disagg_settings(request: Any) -> dict[str, int]:
    """The thresholds a ``set_disagg`` request sets, checked (non-negative integers)."""
    if not isinstance(request, dict) or not request.keys() <= set(DISAGG_KEYS):
        raise BadRequestError(f"set_disagg takes a mapping with keys among {DISAGG_KEYS}")
    settings: dict[str, int] = {}
    for key, value in request.items():
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BadRequestError(f"{key} must be an integer >= 0, got {value!r}")
        settings[key] = value
    return settings


def _job_id(request: Any) -> str:
    if not isinstance(request, dict) or not isinstance(request.get("job_id"), str):
        raise BadRequestError("needs {'job_id': ID}")
    return str(request["job_id"])


def _number(request: Any, key: str, default: float) -> float:
    value = request.get(key, default) if isinstance(request, dict) else default
    if not isinstance(value, int | float):
        raise BadRequestError(f"{key} must be a number")
    return float(value)
