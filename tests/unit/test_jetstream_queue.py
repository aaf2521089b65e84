"""The prefill queue's JetStream backend against a real nats-server: the contract of
docs/disaggregation.md, case by case, as tests/unit/test_disagg_queue.py checks the memory
queue's."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
from _nats_server import running_nats

from dyn.contracts.disagg import PrefillJob
from dyn.disagg.backend import QueueFull
from dyn.disagg.jetstream import JetStreamBackend
from dyn.disagg.nats_connect import NatsOptions

pytestmark = pytest.mark.anyio

LEASE_S = 0.6


def job(request_id: str) -> PrefillJob:
    return PrefillJob(
        request_id=request_id,
        tokens=[1, 2, 3],
        block_hashes=[7],
        block_size=16,
        decode_instance_id="w-1",
    )


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_nats(tmp_path_factory.mktemp("nats")) as url:
        yield url


@pytest.fixture
async def queue(nats_url: str, request: pytest.FixtureRequest) -> AsyncIterator[JetStreamBackend]:
    stream = request.node.name.replace("[", "_").replace("]", "")
    backend = JetStreamBackend(
        NatsOptions(servers=[nats_url]), stream, 3, LEASE_S, 2, storage="memory"
    )
    await backend.open("test")
    try:
        yield backend
    finally:
        await backend.close()


async def test_fifo_push_pull_ack(queue: JetStreamBackend) -> None:
    first = await queue.push(job("a"))
    await queue.push(job("b"))
    lease = await queue.pull(1.0)
    assert lease is not None
    assert (lease.job_id, lease.payload.request_id, lease.delivery) == (first, "a", 1)
    stats = await queue.stats()
    assert (stats.depth, stats.ready, stats.leased) == (2, 1, 1)
    assert await queue.ack(first)
    second = await queue.pull(1.0)
    assert second is not None
    assert second.payload.request_id == "b"
    assert await queue.ack(second.job_id)
    assert (await queue.stats()).depth == 0
    assert await queue.pull(0.3) is None  # waits, then answers nothing


async def test_full_queue_refuses_and_counts_leased_jobs(queue: JetStreamBackend) -> None:
    for name in "abc":
        await queue.push(job(name))
    assert await queue.pull(1.0) is not None  # leased still counts
    with pytest.raises(QueueFull):
        await queue.push(job("d"))
    assert (await queue.stats()).depth == 3


async def test_lapsed_lease_is_redelivered_before_newer_jobs(queue: JetStreamBackend) -> None:
    await queue.push(job("a"))
    first = await queue.pull(1.0)
    assert first is not None
    await queue.push(job("b"))
    await anyio.sleep(LEASE_S + 0.2)  # the puller died: no ack, no touch
    assert not await queue.touch(first.job_id)  # its lease is gone
    again = await queue.pull(2.0)
    assert again is not None
    assert (again.job_id, again.delivery, again.payload.request_id) == (first.job_id, 2, "a")
    assert (await queue.stats()).redelivered_total == 1


async def test_touch_renews_a_lease_of_a_slow_puller(queue: JetStreamBackend) -> None:
    await queue.push(job("a"))
    lease = await queue.pull(1.0)
    assert lease is not None
    for _ in range(4):  # twice the lease, renewed
        await anyio.sleep(LEASE_S / 3)
        assert await queue.touch(lease.job_id)
    assert await queue.pull(0.3) is None  # nobody else got it
    assert await queue.ack(lease.job_id)
    assert (await queue.stats()).redelivered_total == 0


async def test_nack_hands_the_job_back_now(queue: JetStreamBackend) -> None:
    await queue.push(job("a"))
    lease = await queue.pull(1.0)
    assert lease is not None
    assert await queue.nack(lease.job_id)
    again = await queue.pull(0.5)
    assert again is not None
    assert (again.job_id, again.delivery) == (lease.job_id, 2)
    assert (await queue.stats()).redelivered_total == 0  # handed back, not lapsed


async def test_ack_of_a_ready_job_removes_it(queue: JetStreamBackend) -> None:
    """A decode worker whose request was cancelled takes its job off the queue."""
    cancelled = await queue.push(job("cancelled"))
    await queue.push(job("kept"))
    assert await queue.ack(cancelled)
    assert not await queue.ack(cancelled)  # gone already
    lease = await queue.pull(1.0)
    assert lease is not None
    assert lease.payload.request_id == "kept"
    assert await queue.pull(0.3) is None
    assert (await queue.stats()).depth == 1


async def test_ack_of_a_leased_job_by_its_decode_worker_ends_the_lease(
    queue: JetStreamBackend,
) -> None:
    job_id = await queue.push(job("a"))
    lease = await queue.pull(1.0)
    assert lease is not None
    assert await queue.ack(job_id)  # the request went away while a worker had it
    assert not await queue.touch(job_id)  # so that worker abandons it
    assert (await queue.stats()).depth == 0


async def test_job_delivered_max_deliveries_times_is_dropped(queue: JetStreamBackend) -> None:
    await queue.push(job("poison"))
    for delivery in (1, 2):  # max_deliveries is 2
        lease = await queue.pull(2.0)
        assert lease is not None
        assert lease.delivery == delivery
    assert await queue.pull(LEASE_S + 1.0) is None
    for _ in range(50):  # the server announces it, then this backend deletes it
        if not (await queue.stats()).depth:
            break
        await anyio.sleep(0.1)
    assert (await queue.stats()).depth == 0
    assert (await queue.stats()).dropped_total == 1


async def test_jobs_and_leases_outlive_the_queue_process(nats_url: str) -> None:
    """A second backend on the same stream (the queue role restarted) finds the jobs, and a
    lease of the first one's is redelivered once it lapses."""
    options = NatsOptions(servers=[nats_url])
    first = JetStreamBackend(options, "restart", 4, LEASE_S, 3)
    await first.open("first")
    await first.push(job("leased"))
    await first.push(job("ready"))
    assert await first.pull(1.0) is not None
    await first.close()
    second = JetStreamBackend(options, "restart", 4, LEASE_S, 3)
    await second.open("second")
    try:
        names = set()
        for _ in range(2):
            lease = await second.pull(LEASE_S + 2.0)
            assert lease is not None
            names.add(lease.payload.request_id)
            assert await second.ack(lease.job_id)
        assert names == {"leased", "ready"}
        assert (await second.stats()).depth == 0
    finally:
        await second.close()
