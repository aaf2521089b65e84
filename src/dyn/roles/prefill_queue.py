"""The prefill queue role: a bounded work queue with leases, served over the runtime.

Endpoints: ``push`` (a job → ``{"job_id"}``; refused with code ``overloaded`` when
full), ``pull`` (waits up to ``wait_s`` for a job and yields it as a leased ``{"job_id",
"payload", "delivery", "lease_s"}``, or yields nothing), ``ack`` and ``nack`` (by job
id), ``touch`` (renew a lease while working), ``depth``, and ``set_disagg``: the one
place the disaggregation thresholds are changed while serving, since every decode worker
consults the queue (``depth`` carries them) and the queue has one instance. Each decode
worker's ``depth`` call names the thresholds of its own config, so ``depth`` and
``set_disagg`` both answer with the thresholds in force, not only those set. A job not
acked within ``visibility_timeout_s`` goes back to the front of the queue. The jobs are
kept by a backend (:mod:`dyn.disagg.backend`): ``memory`` in this process
(:class:`dyn.disagg.queue.PrefillQueue`), or ``jetstream``, a NATS JetStream work-queue
stream that outlives this process (:mod:`dyn.disagg.jetstream`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Annotated, Literal

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
from dyn.disagg.backend import MemoryBackend, QueueBackend, QueueFull, QueueStats
from dyn.disagg.nats_connect import NatsOptions
from dyn.errors import ConfigError, OverloadedError
from dyn.observability.disagg_metrics import PrefillQueueMetrics
from dyn.runtime.component import Component, endpoint

__all__ = ["DISAGG_KEYS", "PrefillQueueConfig", "PrefillQueueRole"]

# A puller's longest wait per call: it calls again, so a dead queue is noticed this soon.
MAX_PULL_WAIT_S = 30.0
# A decode worker asks for the depth every 0.5 s at least (decode_worker.SETTINGS_POLL_S);
# one silent this long has stopped, and its thresholds no longer count.
DECODE_WORKER_TTL_S = 5.0


class JetStreamOptions(NatsOptions, forbid_unknown_fields=True, frozen=True):
    """The NATS server, and the stream the jobs are kept in."""

    # Default: <namespace>_<component>_prefill, so two graphs on one server keep apart.
    stream: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]+$")] | None = None
    storage: Literal["file", "memory"] = "file"


class PrefillQueueConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # A hard bound on jobs held (ready + leased); the disaggregation rule's
    # max_prefill_queue_size normally keeps the queue far shorter.
    max_size: Annotated[int, msgspec.Meta(gt=0)] = 64
    visibility_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    max_deliveries: Annotated[int, msgspec.Meta(gt=0)] = 5
    # memory: jobs live in this process; jetstream: in a NATS JetStream stream, on the
    # servers of options, or without options on the server of the graph's nats transport.
    # Unset: memory, except in a run whose nats-server `dyn up` starts, where the launch
    # makes it jetstream on that server (one `--transport nats` switches the queue too).
    backend: Literal["memory", "jetstream"] | None = None
    options: JetStreamOptions | None = None

    def __post_init__(self) -> None:
        if self.backend != "jetstream" and self.options is not None:
            raise ValueError("options are for backend jetstream; the memory backend takes none")


class PrefillQueueRole(Component[PrefillQueueConfig]):
    """The queue's endpoints over one backend: in memory (its jobs die with the process)
    or a JetStream stream (its jobs outlive this process and every worker)."""

    async def start(self) -> None:
        self.backend = await self._open_backend()
        self.metrics = PrefillQueueMetrics.of(self.runtime.registry)
        self._redelivered_seen = 0
        self._dropped_seen = 0
        # Thresholds set while serving; unset ones leave each decode worker's own config.
        self.disagg: dict[str, int] = {}
        # Each decode worker's own config thresholds, and when it last said so.
        self._configured: dict[str, tuple[DisaggThresholds, float]] = {}
        await self._observe()

    async def _open_backend(self) -> QueueBackend:
        config = self.config
        sizes = (config.max_size, config.visibility_timeout_s, config.max_deliveries)
        if config.backend != "jetstream":
            return MemoryBackend(*sizes)
        from dyn.disagg.jetstream import JetStreamBackend

        options = config.options
        stream = f"{self.info.namespace}_{self.info.component}_prefill"
        if options is None:  # the run's NATS: the nats transport's server and credentials
            transport = self.runtime.transport
            dial = getattr(transport, "connect_client", None)
            if transport.name != "nats" or dial is None:
                raise ConfigError(
                    f"prefill queue {self.info.component}: backend jetstream without options "
                    f"uses the graph's nats transport, but the transport is "
                    f"{transport.name}; name the NATS servers in options, e.g. "
                    "options: {servers: [nats://127.0.0.1:4222]}"
                )
            backend = JetStreamBackend(None, stream, *sizes, dial=dial)
        else:
            stream = options.stream or stream
            backend = JetStreamBackend(options, stream, *sizes, storage=options.storage)
        await backend.open(name=f"dyn {self.info.component} {self.info.instance_id}")
        self.log.info("prefill jobs kept in JetStream stream %s", stream)
        return backend

    async def stop(self) -> None:
        await self.backend.close()

    async def _observe(self) -> QueueStats:
        """The backend's state, reflected in the metrics."""
        stats = await self.backend.stats()
        self.metrics.depth.set(stats.depth)
        redelivered = stats.redelivered_total - self._redelivered_seen
        if redelivered > 0:
            self.metrics.redelivered.inc(redelivered)
            self.log.info("%d prefill job(s) redelivered after their lease expired", redelivered)
        self._redelivered_seen = stats.redelivered_total
        return stats

    @endpoint
    async def push(self, job: PrefillJob, ctx: Context) -> AsyncIterator[Pushed]:
        try:
            job_id = await self.backend.push(job)
        except QueueFull as exc:
            raise OverloadedError(str(exc)) from exc
        stats = await self._observe()
        yield Pushed(job_id=job_id, depth=stats.depth)

    @endpoint
    async def pull(self, request: PullRequest, ctx: Context) -> AsyncIterator[LeasedJob]:
        lease = await self.backend.pull(min(max(request.wait_s, 0.0), MAX_PULL_WAIT_S))
        await self._observe()
        if lease is not None:
            yield lease

    @endpoint
    async def ack(self, request: JobRef, ctx: Context) -> AsyncIterator[Acked]:
        acked = await self.backend.ack(request.job_id)
        await self._observe()
        yield Acked(acked=acked)

    @endpoint
    async def touch(self, request: JobRef, ctx: Context) -> AsyncIterator[LeaseState]:
        """Renew a lease: ``{"leased": bool}`` (false: it expired and went to another)."""
        yield LeaseState(leased=await self.backend.touch(request.job_id))

    @endpoint
    async def nack(self, request: JobRef, ctx: Context) -> AsyncIterator[Nacked]:
        nacked = await self.backend.nack(request.job_id)
        await self._observe()
        yield Nacked(nacked=nacked)

    @endpoint
    async def depth(self, request: DepthRequest, ctx: Context) -> AsyncIterator[QueueDepth]:
        """The queue's state (``{}`` from an operator); a decode worker also names itself."""
        if request.instance_id is not None and request.configured is not None:
            self._configured[request.instance_id] = (request.configured, anyio.current_time())
        yield self._state(await self._observe())

    @endpoint
    async def set_disagg(self, request: DisaggSettings, ctx: Context) -> AsyncIterator[QueueDepth]:
        """``{"max_local_prefill_length"?: N, "max_prefill_queue_size"?: N}``; answers with
        the queue's state, every threshold now in force included."""
        self.disagg = {**self.disagg, **request.given()}
        state = self._state(await self._observe())
        self.log.info("disaggregation thresholds now %s (set: %s)", state.thresholds, self.disagg)
        yield state

    def _state(self, queue: QueueStats) -> QueueDepth:
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
