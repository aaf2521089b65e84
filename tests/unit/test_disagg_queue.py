"""The prefill queue's bookkeeping, on a fake clock: bound, leases, redelivery."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dyn.disagg.queue import PrefillQueue, QueueFull


def test_fifo_push_pull_ack() -> None:
    queue = PrefillQueue(max_size=4, visibility_timeout_s=10)
    first, second = queue.push("a", 0.0), queue.push("b", 0.0)
    lease = queue.pull(1.0)
    assert lease is not None
    assert (lease.job_id, lease.payload, lease.delivery) == (first, "a", 1)
    assert lease.deadline == 11.0
    assert (queue.depth, queue.ready, queue.leased) == (2, 1, 1)
    assert queue.ack(first)
    assert not queue.ack(first)
    assert queue.pull(1.0).job_id == second  # type: ignore[union-attr]
    assert queue.pull(1.0) is None


def test_full_queue_refuses_and_counts_leased_jobs() -> None:
    queue = PrefillQueue(max_size=2, visibility_timeout_s=10)
    queue.push("a", 0.0)
    queue.push("b", 0.0)
    queue.pull(0.0)  # leased jobs still take room, as JetStream's max_msgs
    with pytest.raises(QueueFull):
        queue.push("c", 0.0)
    queue.ack(queue.pull(0.0).job_id)  # type: ignore[union-attr]
    queue.push("c", 0.0)


def test_unacked_lease_is_redelivered_first_after_the_timeout() -> None:
    queue = PrefillQueue(max_size=4, visibility_timeout_s=5)
    job = queue.push("a", 0.0)
    queue.push("b", 0.0)
    assert queue.pull(0.0).job_id == job  # type: ignore[union-attr]
    assert queue.next_deadline() == 5.0
    queue.expire(4.9)
    assert queue.leased == 1
    again = queue.pull(5.0)  # the puller died: the job comes back ahead of "b"
    assert again is not None
    assert again.job_id == job
    assert again.delivery == 2
    assert queue.redelivered_total == 1


def test_touch_renews_a_lease_of_a_slow_puller() -> None:
    queue = PrefillQueue(max_size=4, visibility_timeout_s=5)
    job = queue.push("a", 0.0)
    queue.pull(0.0)
    assert queue.touch(job, 4.0) == 9.0
    assert queue.pull(8.0) is None
    assert queue.leased == 1
    assert queue.pull(9.0) is not None  # not renewed again: redelivered
    assert queue.touch("job-unknown", 9.0) is None


def test_nack_hands_the_job_back_now() -> None:
    queue = PrefillQueue(max_size=4, visibility_timeout_s=5)
    job = queue.push("a", 0.0)
    queue.pull(0.0)
    assert queue.nack(job)
    assert not queue.nack(job)
    assert queue.pull(0.1).job_id == job  # type: ignore[union-attr]


def test_ack_of_a_ready_job_removes_it() -> None:
    """A decode worker whose request went away takes its job out before anyone pulls it."""
    queue = PrefillQueue(max_size=4, visibility_timeout_s=5)
    job = queue.push("a", 0.0)
    assert queue.ack(job)
    assert queue.depth == 0
    assert queue.pull(0.0) is None


def test_job_delivered_max_deliveries_times_is_dropped() -> None:
    queue = PrefillQueue(max_size=4, visibility_timeout_s=1, max_deliveries=2)
    queue.push("poison", 0.0)
    assert queue.pull(0.0) is not None
    assert queue.pull(1.0) is not None  # second delivery
    assert queue.pull(2.0) is None
    assert queue.depth == 0
    assert queue.dropped_total == 1


@given(st.lists(st.sampled_from(["push", "pull", "ack", "nack", "tick"]), max_size=60))
def test_counts_stay_consistent(ops: list[str]) -> None:
    queue = PrefillQueue(max_size=3, visibility_timeout_s=2, max_deliveries=3)
    now, held = 0.0, []
    for op in ops:
        if op == "push":
            try:
                queue.push(op, now)
            except QueueFull:
                assert queue.depth == 3
        elif op == "pull":
            lease = queue.pull(now)
            if lease is not None:
                held.append(lease.job_id)
        elif op in ("ack", "nack") and held:
            getattr(queue, op)(held.pop(0))
        else:
            now += 1.0
        assert queue.depth == queue.ready + queue.leased <= 3
