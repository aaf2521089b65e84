"""WorkerFeed: what a router applies of one worker's updates arriving over a broker."""

from __future__ import annotations

from dyn.kv.events import KvCleared, KvEvent, KvRemoved, KvStored, StoredBlock, WorkerUpdate
from dyn.kv.feed import WorkerFeed


def stored(event_id: int) -> KvEvent:
    block = StoredBlock(block_hash=event_id, tokens_hash=event_id)
    return KvEvent(event_id=event_id, data=KvStored(blocks=[block]))


def snapshot(last_id: int) -> WorkerUpdate:
    return WorkerUpdate(events=[KvEvent(event_id=last_id, data=KvCleared())], snapshot=True)


def ids(updates: list[WorkerUpdate]) -> list[list[int]]:
    return [[e.event_id for e in u.events] for u in updates]


def test_updates_wait_for_the_snapshot_and_only_newer_events_follow_it() -> None:
    feed = WorkerFeed()
    for update in ([stored(4)], [stored(5), stored(6)], [stored(7)]):
        assert feed.receive(WorkerUpdate(events=update)).apply == []
    step = feed.resync(snapshot(5))  # the worker had applied up to 5 when asked
    assert not step.needs_snapshot
    assert ids(step.apply) == [[5], [6], [7]]
    assert step.apply[0].snapshot
    assert ids(feed.receive(WorkerUpdate(events=[stored(8)])).apply) == [[8]]
    assert feed.last_id == 8


def test_a_gap_asks_for_a_snapshot_and_keeps_the_update_that_showed_it() -> None:
    feed = WorkerFeed()
    feed.resync(snapshot(3))
    step = feed.receive(WorkerUpdate(events=[stored(5)]))
    assert step.needs_snapshot
    assert step.apply == []
    assert not feed.synced
    assert feed.receive(WorkerUpdate(events=[stored(6)])).apply == []
    step = feed.resync(snapshot(4))  # 5 and 6 are newer than this snapshot
    assert ids(step.apply) == [[4], [5], [6]]
    assert feed.gaps == 1


def test_a_gap_among_held_updates_asks_again() -> None:
    feed = WorkerFeed()
    feed.receive(WorkerUpdate(events=[stored(3)]))
    feed.receive(WorkerUpdate(events=[stored(9)]))
    step = feed.resync(snapshot(2))
    assert ids(step.apply) == [[2], [3]]
    assert step.needs_snapshot
    assert ids(feed.resync(snapshot(9)).apply) == [[9]]  # 9 was held again, and is in it


def test_loads_apply_once_synced_and_a_marker_resnapshots() -> None:
    feed = WorkerFeed()
    feed.resync(snapshot(0))
    load_only = WorkerUpdate()
    assert feed.receive(load_only).apply == [load_only]
    removed = KvEvent(event_id=1, data=KvRemoved(block_hashes=[1]))
    assert ids(feed.receive(WorkerUpdate(events=[removed])).apply) == [[1]]
    assert feed.receive(WorkerUpdate(snapshot=True)).needs_snapshot
    assert feed.resync(snapshot(1)).apply == [snapshot(1)]


def test_a_restart_waits_for_a_snapshot() -> None:
    feed = WorkerFeed()
    feed.resync(snapshot(2))
    assert feed.restart().needs_snapshot
    assert feed.receive(WorkerUpdate(events=[stored(3)])).apply == []
    assert ids(feed.resync(snapshot(2)).apply) == [[2], [3]]
