"""One worker's KV updates, as a router must apply them when they come over a broker.

A broker (NATS) fans a worker's updates out to every router, but a router that starts
late has missed the history, and one that lost messages (a reconnect) has a hole in it.
So a router keeps one :class:`WorkerFeed` per worker: until it has a snapshot the feed
holds what arrives; the snapshot (the worker's whole cache as of event id ``S``) is
applied first, then only events newer than ``S``, in order. An event id that skips one
means lost events: the feed asks for a fresh snapshot and holds what arrives meanwhile.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from dyn.kv.events import KvEvent, WorkerUpdate

__all__ = ["FeedStep", "WorkerFeed"]

# Updates held while a snapshot is on its way; past this the oldest are dropped, which
# at worst shows up as a gap after the snapshot (and so as one more snapshot).
MAX_HELD_UPDATES = 4096


@dataclass
class FeedStep:
    """What to do after one update: apply ``apply`` in order, then, if
    ``needs_snapshot``, fetch a snapshot and hand it to :meth:`WorkerFeed.resync`."""

    apply: list[WorkerUpdate] = field(default_factory=list)
    needs_snapshot: bool = False


class WorkerFeed:
    """Sequences one worker's updates (see the module docstring)."""

    def __init__(self, max_held: int = MAX_HELD_UPDATES) -> None:
        self.last_id: int | None = None  # id of the last event applied; None: no snapshot yet
        self._held: deque[WorkerUpdate] = deque(maxlen=max_held)
        self.snapshots = 0  # how many snapshots were applied (for tests and stats)
        self.gaps = 0  # how many gaps were found

    @property
    def synced(self) -> bool:
        return self.last_id is not None

    def receive(self, update: WorkerUpdate) -> FeedStep:
        """An update that came over the broker."""
        if self.last_id is None:
            self._held.append(update)
            return FeedStep()
        if update.snapshot:
            # The worker's publisher itself fell behind and restarted its history.
            return self._lost(update)
        fresh: list[KvEvent] = []
        expected = self.last_id + 1
        for event in update.events:
            if event.event_id < expected:
                continue  # already in the snapshot (or applied)
            if event.event_id != expected:
                return self._lost(update)
            fresh.append(event)
            expected += 1
        self.last_id = expected - 1
        if len(fresh) == len(update.events):
            return FeedStep(apply=[update])
        if not fresh and update.load is None:
            return FeedStep()  # nothing the router does not have
        return FeedStep(apply=[WorkerUpdate(events=fresh, load=update.load)])

    def resync(self, snapshot: WorkerUpdate) -> FeedStep:
        """The snapshot fetched from the worker (its first event's id is the last id it
        covers); then whatever was held, from the first event newer than it."""
        if not snapshot.snapshot or not snapshot.events:
            raise ValueError("a snapshot update starts with the event that clears the cache")
        self.last_id = snapshot.events[0].event_id
        self.snapshots += 1
        step = FeedStep(apply=[snapshot])
        held, self._held = self._held, deque(maxlen=self._held.maxlen)
        while held:
            update = held.popleft()
            if update.snapshot:
                continue  # the snapshot just applied is newer than anything held
            next_step = self.receive(update)
            step.apply.extend(next_step.apply)
            if next_step.needs_snapshot:
                self._held.extend(held)
                step.needs_snapshot = True
                break
        return step

    def restart(self) -> FeedStep:
        """Messages may have been lost without a later event to show it (the broker
        connection was down): start over from a snapshot."""
        self.last_id = None
        self._held.clear()
        return FeedStep(needs_snapshot=True)

    def _lost(self, update: WorkerUpdate) -> FeedStep:
        self.gaps += 1
        self.last_id = None
        self._held.clear()
        if not update.snapshot:
            self._held.append(update)  # its events may be newer than the next snapshot
        return FeedStep(needs_snapshot=True)
