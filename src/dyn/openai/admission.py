"""Admission control for the generation routes: a bound on requests in flight and queued.

A request past both bounds is refused at once with 429 (and ``Retry-After``) instead of
waiting: memory stays bounded and the client learns to back off within milliseconds. A
queued request that waits longer than the queue timeout is refused the same way. Once the
frontend drains, every new request is refused with 503 while those admitted finish.
"""

from __future__ import annotations

import math

import anyio

from dyn.errors import OverloadedError, TransportError
from dyn.openai.errors import ApiError

__all__ = ["Admission"]


class Admission:
    """Counts admitted requests; ``max_inflight=None`` admits everything until draining."""

    def __init__(
        self, max_inflight: int | None = None, max_queued: int = 0, queue_timeout_s: float = 10.0
    ) -> None:
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.queue_timeout_s = queue_timeout_s
        self._slots = anyio.Semaphore(max_inflight) if max_inflight is not None else None
        self.active = 0
        self.draining = False
        self._idle = anyio.Event()
        self._idle.set()

    @property
    def queued(self) -> int:
        """Requests waiting for a slot now (at most ``max_queued``)."""
        return self._slots.statistics().tasks_waiting if self._slots is not None else 0

    async def enter(self) -> None:
        """Take a slot, waiting in the queue if there is room in it; raise 429 or 503."""
        if self.draining:
            raise ApiError.of(TransportError("the frontend is shutting down; retry on another"))
        slots = self._slots
        if slots is not None:
            if slots.value == 0 and self.queued >= self.max_queued:
                raise ApiError.of(OverloadedError(self._overloaded()))
            timeout = self.queue_timeout_s if self.queue_timeout_s > 0 else math.inf
            with anyio.move_on_after(timeout) as waited:
                await slots.acquire()
            if waited.cancelled_caught:
                raise ApiError.of(OverloadedError(self._overloaded()))
        if self.active == 0:
            self._idle = anyio.Event()
        self.active += 1

    def leave(self) -> None:
        """Give back the slot of a request that ``enter`` admitted (once per request)."""
        self.active -= 1
        if self._slots is not None:
            self._slots.release()
        if self.active == 0:
            self._idle.set()

    async def drain(self) -> None:
        """Refuse new requests from now on and wait until the admitted ones are done."""
        self.draining = True
        await self._idle.wait()

    def _overloaded(self) -> str:
        return (
            f"the server is at its limit of {self.max_inflight} requests in flight and "
            f"{self.max_queued} queued; retry after the Retry-After delay"
        )
