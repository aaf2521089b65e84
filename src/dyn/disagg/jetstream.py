"""The prefill queue kept in a NATS JetStream work-queue stream.

The contract's parts map onto JetStream as follows (docs/disaggregation.md):

- a job is one message of a stream with work-queue retention; its id is its stream
  sequence (``js-<seq>``);
- the bound is the stream's ``max_msgs`` with ``discard: new``: a push past it fails, and
  an unacked message (leased or not) still counts;
- ``pull`` fetches from one durable pull consumer with explicit acks; ``ack_wait`` is the
  visibility timeout, ``touch`` is an "in progress" ack, ``nack`` a "nak" (redeliver now);
  a lapsed lease is redelivered by the server before newer messages;
- the consumer's ``max_deliver`` is ``max_deliveries``; the server then announces the
  message on its max-deliveries advisory and this backend deletes it (dropped);
- ``ack`` of a ready job (its request went away) deletes the message from the stream.

The server holds every job and every lease, so a prefill worker's death, and this
process's too, loses no job. This process keeps only the message handles of the leases it
gave out, which is how a lease is acked, renewed or found gone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import msgspec

from dyn.contracts.disagg import LeasedJob, PrefillJob
from dyn.disagg.backend import QueueFull, QueueStats
from dyn.disagg.nats_connect import NatsOptions, connect

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js.client import JetStreamContext

__all__ = ["JetStreamBackend"]

log = logging.getLogger(__name__)

JOB_PREFIX = "js-"
CONSUMER = "prefill_workers"
# One fetch waits at most this long, so a cancelled pull holds the fetch lock briefly.
FETCH_SLICE_S = 1.0
# JetStream API error codes (nats-server's errors.json).
ERR_MAX_MSGS = 10077  # "maximum messages exceeded"
ERR_STREAM_NAME_IN_USE = 10058  # a stream of this name exists with another config
ERR_NO_MESSAGE = (10037, 10043)  # "no message found", "sequence N not found"


class JetStreamBackend:
    """One stream and one durable pull consumer, created (or updated) at :meth:`open`."""

    def __init__(
        self,
        options: NatsOptions | None,
        stream: str,
        max_size: int,
        visibility_timeout_s: float,
        max_deliveries: int,
        *,
        storage: str = "file",
        dial: Callable[[str], Awaitable[NatsClient]] | None = None,
    ) -> None:
        # Either options to connect with, or ``dial``: how to reach the run's own NATS
        # (the nats transport's server and credentials).
        if options is None and dial is None:
            raise ValueError("a JetStream backend needs NATS options or a way to dial")
        self.options = options
        self._dial = dial
        self.stream = stream
        self.subject = f"{stream}.jobs"
        self.max_size = max_size
        self.visibility_timeout_s = visibility_timeout_s
        self.max_deliveries = max_deliveries
        self.storage = storage
        self.redelivered_total = 0
        self.dropped_total = 0
        # The leases this process handed out: job id → (message, lease deadline).
        self._leased: dict[str, tuple[Msg, float]] = {}
        self._nacked: set[str] = set()  # handed back on purpose: their next delivery is no lapse
        self._fetch_lock = anyio.Lock()
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._pull: JetStreamContext.PullSubscription | None = None
        self._advisories: Subscription | None = None

    async def open(self, name: str) -> None:
        from nats.js.api import (
            AckPolicy,
            ConsumerConfig,
            DiscardPolicy,
            RetentionPolicy,
            StorageType,
            StreamConfig,
        )
        from nats.js.errors import APIError

        if self._dial is not None:
            self._nc = nc = await self._dial(name)
        else:
            assert self.options is not None
            self._nc = nc = await connect(self.options, name)
        self._js = js = nc.jetstream()
        stream = StreamConfig(
            name=self.stream,
            subjects=[self.subject],
            retention=RetentionPolicy.WORK_QUEUE,
            max_msgs=self.max_size,
            discard=DiscardPolicy.NEW,
            storage=StorageType(self.storage),
        )
        try:
            await js.add_stream(stream)
        except APIError as exc:
            if exc.err_code != ERR_STREAM_NAME_IN_USE:
                raise
            await js.update_stream(stream)  # a new max_size; the jobs stay
        await js.add_consumer(
            self.stream,
            ConsumerConfig(
                durable_name=CONSUMER,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.visibility_timeout_s,
                max_deliver=self.max_deliveries,
                max_ack_pending=-1,
            ),
        )
        self._pull = await js.pull_subscribe_bind(CONSUMER, self.stream)
        self._advisories = await nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stream}.{CONSUMER}",
            cb=self._on_max_deliveries,
        )

    async def _on_max_deliveries(self, msg: Msg) -> None:
        """A job delivered ``max_deliveries`` times: drop it, as the memory queue does."""
        try:
            seq = int(json.loads(msg.data)["stream_seq"])
        except (ValueError, KeyError, TypeError):
            return
        if await self._delete(seq):
            self.dropped_total += 1
            log.warning(
                "prefill job %s%d dropped after %d deliveries", JOB_PREFIX, seq, self.max_deliveries
            )

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "open() first"
        return self._js

    async def push(self, job: PrefillJob) -> str:
        from nats.js.errors import APIError

        try:
            ack = await self.js.publish(
                self.subject, msgspec.msgpack.encode(job), stream=self.stream
            )
        except APIError as exc:
            if exc.err_code == ERR_MAX_MSGS:
                raise QueueFull(f"the prefill queue is full ({self.max_size} jobs)") from exc
            raise
        return f"{JOB_PREFIX}{ack.seq}"

    async def pull(self, wait_s: float) -> LeasedJob | None:
        import nats.errors

        assert self._pull is not None, "open() first"
        give_up = anyio.current_time() + wait_s
        while True:
            left = give_up - anyio.current_time()
            if left <= 0.01:
                return None
            try:
                async with self._fetch_lock:
                    msgs = await self._pull.fetch(1, timeout=min(left, FETCH_SLICE_S))
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                return self._lease(msg)

    def _lease(self, msg: Msg) -> LeasedJob:
        meta = msg.metadata
        job_id = f"{JOB_PREFIX}{meta.sequence.stream}"
        if meta.num_delivered > 1 and job_id not in self._nacked:
            self.redelivered_total += 1
        self._nacked.discard(job_id)
        self._leased[job_id] = (msg, anyio.current_time() + self.visibility_timeout_s)
        return LeasedJob(
            job_id=job_id,
            payload=msgspec.msgpack.decode(msg.data, type=PrefillJob),
            delivery=meta.num_delivered,
            lease_s=self.visibility_timeout_s,
        )

    async def ack(self, job_id: str) -> bool:
        leased = self._leased.pop(job_id, None)
        if leased is not None and leased[1] > anyio.current_time():
            await leased[0].ack_sync()
            return True
        # Not leased here (ready, or a lease of this process's previous life): delete it.
        seq = _sequence(job_id)
        return seq is not None and await self._delete(seq)

    async def touch(self, job_id: str) -> bool:
        leased = self._leased.get(job_id)
        now = anyio.current_time()
        if leased is None or leased[1] <= now:
            self._leased.pop(job_id, None)
            return False
        await leased[0].in_progress()
        self._leased[job_id] = (leased[0], now + self.visibility_timeout_s)
        return True

    async def nack(self, job_id: str) -> bool:
        leased = self._leased.pop(job_id, None)
        if leased is None or leased[1] <= anyio.current_time():
            return False
        await leased[0].nak()
        self._nacked.add(job_id)
        return True

    async def _delete(self, seq: int) -> bool:
        from nats.js.errors import APIError

        try:
            return bool(await self.js.delete_msg(self.stream, seq))
        except APIError as exc:
            if exc.err_code in ERR_NO_MESSAGE:
                return False
            raise

    async def stats(self) -> QueueStats:
        now = anyio.current_time()
        for job_id, (_, deadline) in list(self._leased.items()):
            if deadline <= now:
                del self._leased[job_id]  # lapsed: the server redelivers it
        stream = await self.js.stream_info(self.stream)
        consumer = await self.js.consumer_info(self.stream, CONSUMER)
        depth = stream.state.messages
        leased = min(consumer.num_ack_pending, depth)
        return QueueStats(
            depth=depth,
            ready=depth - leased,
            leased=leased,
            max_size=self.max_size,
            visibility_timeout_s=self.visibility_timeout_s,
            max_deliveries=self.max_deliveries,
            redelivered_total=self.redelivered_total,
            dropped_total=self.dropped_total,
        )

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()  # leases are the server's: nothing here to drain
            self._nc = None


def _sequence(job_id: str) -> int | None:
    if not job_id.startswith(JOB_PREFIX):
        return None
    try:
        return int(job_id[len(JOB_PREFIX) :])
    except ValueError:
        return None
