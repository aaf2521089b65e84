"""Virtual-time replay: the real routing strategy in front of real mocker cores.

A discrete-event simulation with no processes, sockets or sleeps. Each worker is a
:class:`~dyn.engines.mocker.core.MockerCore`; the strategy is the same
:class:`~dyn.routing.base.RoutingStrategy` object the processor runs, fed the way the processor
feeds it: ``select`` and ``on_routed`` when a request is sent, ``on_first_item`` and
``on_finished`` as its stream goes, every KV event and the load as each step ends
(delivery is instant). A core behaves as :class:`~dyn.engines.mocker.engine.MockerEngine`
does in real time: a step started at ``t`` delivers its tokens and events at ``t +
duration``, and the next step starts then, taking in whatever arrived meanwhile.

At one instant the order is: finished steps deliver, then requests arrive and are
routed, then idle cores with work start a step. Requests go out as ``dyn bench`` sends
them: at their arrival offsets, after the item they follow, at most ``max_concurrency``
at a time.

With several routers (processor replicas), requests go to them in turn, as the
frontend's round-robin spreads them; every router follows every worker's events and
load. Routers with replica sync on (:meth:`KvRouter.enable_sync`) hand each other their
sync batches after every hook, delivered ``sync_delay_s`` later (before the next routing
decision due by then).

A run of decode steps that nothing can observe is taken in one go
(:meth:`MockerCore.decode_steps`): routing decisions are the only thing that looks at
other workers' state, so a core may run ahead up to the next possible decision — the
next arrival, or, when a finished request can release another, the end of any other
core's current run. The result is the same as stepping one at a time.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from dyn.bench.stats import RequestResult
from dyn.discovery.base import Instance
from dyn.engines.base import EngineOutput, EngineRequest
from dyn.engines.mocker.config import MockerConfig
from dyn.engines.mocker.core import DecodeRun, MockerCore, StepResult
from dyn.errors import BadRequestError
from dyn.routing.base import RouteRequest, RoutingStrategy
from dyn.routing.kv.router import KvRouter
from dyn.routing.kv.sync import ReplicaSync, SyncBatch

__all__ = ["SimRequest", "SimRun", "Simulator", "sim_instances"]


@dataclass(frozen=True)
class SimRequest:
    """One request to replay. ``tokens`` makes the prompt when it is sent (a long trace
    would not fit in memory all at once); ``after`` is the index of a request that must
    finish first; ``arrival_s`` is the offset from the run's start (``None``: at once)."""

    index: int
    input_len: int
    output_len: int
    tokens: Callable[[], list[int]]
    arrival_s: float | None = None
    after: int | None = None


@dataclass
class SimRun:
    """What one :meth:`Simulator.run` did: results in request order and the worker
    (instance id) each went to, the virtual duration, and the cores' counter deltas."""

    results: list[RequestResult]
    workers: list[str]
    duration_s: float
    steps: int
    prompt_tokens: int
    cached_prompt_tokens: int
    preemptions: int


@dataclass
class _Flight:
    request: SimRequest
    route: RouteRequest
    core: int
    router: int
    sent: float
    result: RequestResult
    last: float = 0.0


@dataclass
class _Core:
    core: MockerCore
    instance: Instance
    busy_until: float = math.inf  # end of the current run; inf when idle
    started: float = 0.0
    step: StepResult | None = None  # the run's first step
    decodes: DecodeRun | None = None  # the decode-only steps that followed it


def sim_instances(config: MockerConfig, workers: int) -> list[Instance]:
    """Discovery entries for ``workers`` simulated workers, in the order discovery would
    list them (sorted by key): ids are zero-padded, so index order is key order."""
    width = len(str(max(workers - 1, 0)))
    return [
        Instance(
            namespace="sim",
            component="worker",
            endpoint="generate",
            instance_id=f"sim-{i:0{width}d}",
            address=f"sim:{i}",
            transport="sim",
            replica=i,
            metadata={"block_size": config.block_size, "total_blocks": config.num_gpu_blocks},
        )
        for i in range(workers)
    ]


class Simulator:
    """Workers and one router, or several fed in turn, in virtual time. :meth:`run` may be
    called more than once (a warm-up, then the measured requests): the clock and the
    caches carry over."""

    def __init__(
        self,
        config: MockerConfig,
        workers: int,
        router: RoutingStrategy | Sequence[RoutingStrategy],
        *,
        max_concurrency: int | None = None,
        ignore_eos: bool = True,
        max_model_len: int | None = None,
        skip_ahead: bool = True,
        sync_delay_s: float = 0.0,
    ) -> None:
        if workers < 1:
            raise ValueError("a simulation needs at least one worker")
        self.routers = [router] if isinstance(router, RoutingStrategy) else list(router)
        if not self.routers:
            raise ValueError("a simulation needs at least one router")
        self.router = self.routers[0]
        self._syncs: list[ReplicaSync | None] = [
            r.sync if isinstance(r, KvRouter) else None for r in self.routers
        ]
        self.sync_delay_s = sync_delay_s
        self._mail: deque[tuple[float, int, SyncBatch]] = deque()  # due times never decrease
        self._routed = 0  # requests sent so far: the next goes to routers[_routed % len]
        self.instances = sim_instances(config, workers)
        self._cores = [_Core(MockerCore(config), instance) for instance in self.instances]
        self._by_id = {c.instance.instance_id: i for i, c in enumerate(self._cores)}
        self.max_concurrency = max_concurrency
        self.ignore_eos = ignore_eos
        self.max_model_len = max_model_len
        self.skip_ahead = skip_ahead
        self.now = 0.0
        self.steps = 0
        self._runs = 0
        for each in self.routers:
            each.on_instances([i.instance_id for i in self.instances])

    # -- the event loop ----------------------------------------------------------------

    def run(self, requests: Sequence[SimRequest]) -> SimRun:
        """Replay ``requests`` from the current clock until every one has ended."""
        self._runs += 1
        epoch = self.now
        steps0 = self.steps
        counters0 = self._counters()
        self._flights: dict[str, _Flight] = {}
        self._done: dict[int, RequestResult] = {}
        self._worker_of: dict[int, str] = {}
        indices = {r.index for r in requests}
        self._parked: dict[int, list[SimRequest]] = {}
        self._ready: deque[SimRequest] = deque()
        arrivals = [(epoch + (r.arrival_s or 0.0), n, r) for n, r in enumerate(requests)]
        heapq.heapify(arrivals)
        cores = self._cores
        self._last_end = epoch
        while True:
            next_arrival = arrivals[0][0] if arrivals else math.inf
            now = min(next_arrival, min(c.busy_until for c in cores))
            if math.isinf(now):
                break
            self.now = now
            for index, core in enumerate(cores):
                if core.busy_until == now:
                    self._deliver(index)
            while arrivals and arrivals[0][0] <= now:
                request = heapq.heappop(arrivals)[2]
                if request.after in indices and request.after not in self._done:
                    self._parked.setdefault(request.after, []).append(request)
                else:
                    self._ready.append(request)
            cap = self.max_concurrency
            while self._ready and (cap is None or len(self._flights) < cap):
                self._send(self._ready.popleft(), now)
            following = arrivals[0][0] if arrivals else math.inf
            # Open loop, only arrivals route: a decode-only batch may run ahead at once.
            # Otherwise every core takes its first step before any runs ahead (_extend).
            open_loop = self.skip_ahead and not (self._parked or self._ready)
            started = []
            for index, core in enumerate(cores):
                if core.busy_until != math.inf or not core.core.has_work():
                    continue
                if not (open_loop and self._decode(index, now, following)):
                    self._start(index, now)
                    started.append(index)
            if self.skip_ahead:
                for index in started:
                    self._extend(index, following)
        missing = indices - self._done.keys()
        if missing or self._flights:
            raise AssertionError(f"requests never ended: {sorted(missing)[:5]}")
        counters = self._counters()
        return SimRun(
            results=[self._done[r.index] for r in requests],
            workers=[self._worker_of.get(r.index, "") for r in requests],
            duration_s=self._last_end - epoch,
            steps=self.steps - steps0,
            prompt_tokens=counters[0] - counters0[0],
            cached_prompt_tokens=counters[1] - counters0[1],
            preemptions=counters[2] - counters0[2],
        )

    def _counters(self) -> tuple[int, int, int]:
        cores = [c.core for c in self._cores]
        return (
            sum(c.prompt_tokens_total for c in cores),
            sum(c.cached_prompt_tokens_total for c in cores),
            sum(c.preemptions_total for c in cores),
        )

    # -- requests ----------------------------------------------------------------------

    def _send(self, request: SimRequest, now: float) -> None:
        """Route ``request`` and queue it on the chosen core, as the processor does."""
        result = RequestResult(index=request.index, input_len=request.input_len, start_s=now)
        tokens = request.tokens()
        result.input_len = len(tokens)
        request_id = f"sim-{self._runs}-{request.index}"
        # As the processor does: the request's output budget, for strategies that weigh it.
        route = RouteRequest(
            request_id=request_id, tokens=tokens, extra={"max_tokens": request.output_len}
        )
        if self.max_model_len is not None and len(tokens) + request.output_len > (
            self.max_model_len
        ):
            # The frontend refuses it before routing (prompt + max_tokens over the context).
            self._fail(request, result, 400, "prompt plus max_tokens exceed max_model_len")
            return
        self._receive(now)
        which = self._routed % len(self.routers)
        self._routed += 1
        router = self.routers[which]
        instance = router.select(self.instances, route)
        router.on_routed(instance, route)
        self._post(which)
        index = self._by_id[instance.instance_id]
        self._worker_of[request.index] = instance.instance_id
        engine_request = EngineRequest(
            request_id=request_id,
            tokens=tokens,
            max_tokens=request.output_len,
            ignore_eos=self.ignore_eos,
        )
        try:
            self._cores[index].core.add(engine_request, now)
        except BadRequestError as exc:
            router.on_finished(instance, route)
            self._post(which)
            self._fail(request, result, 400, str(exc))
            return
        self._flights[request_id] = _Flight(request, route, index, which, now, result)

    # -- replica sync ------------------------------------------------------------------

    def _post(self, sender: int) -> None:
        """Hand router ``sender``'s new sync messages to the other routers."""
        sync = self._syncs[sender]
        if sync is None or not sync.pending:
            return
        batch = sync.take()
        for target, peer in enumerate(self._syncs):
            if peer is not None and target != sender:
                self._mail.append((self.now + self.sync_delay_s, target, batch))
        if self.sync_delay_s <= 0:
            self._receive(self.now)

    def _receive(self, now: float) -> None:
        """Apply the sync batches due by ``now``; a router new to a peer gets its state."""
        while self._mail and self._mail[0][0] <= now:
            _, target, batch = self._mail.popleft()
            sync = self._syncs[target]
            assert sync is not None
            if sync.apply(batch):
                sender = next(
                    i for i, s in enumerate(self._syncs) if s and s.router_id == batch.router_id
                )
                self._mail.append((now + self.sync_delay_s, sender, sync.snapshot()))

    def _fail(self, request: SimRequest, result: RequestResult, status: int, error: str) -> None:
        result.status, result.error = status, f"HTTP {status}: {error}"
        self._end(request, result, self.now)

    def _end(self, request: SimRequest, result: RequestResult, now: float) -> None:
        self._done[request.index] = result
        self._last_end = max(self._last_end, now)
        self._ready.extend(self._parked.pop(request.index, ()))

    # -- cores -------------------------------------------------------------------------

    def _start(self, index: int, now: float) -> None:
        """Start one step on an idle core with work."""
        core = self._cores[index]
        result = core.core.step(now)
        core.started, core.step = now, result
        core.busy_until = now + result.duration_s
        self.steps += 1

    def _decode(self, index: int, now: float, until: float) -> bool:
        """Start a run of decode-only steps ending by ``until``; False if none fits."""
        core = self._cores[index]
        run = core.core.decode_steps(now, until)
        if run is None or not run.durations:
            return False
        core.started, core.step = now, None
        self._add_decodes(core, run, now)
        return True

    def _extend(self, index: int, following: float) -> None:
        """Add the decode steps nothing can observe before the next routing decision."""
        core = self._cores[index]
        until = following
        if self._parked or self._ready:  # a finish anywhere may send a request at once
            if core.step and any(out.finish_reason for _, out in core.step.outputs):
                return  # this one must be seen when it happens
            for other, peer in enumerate(self._cores):
                if other != index:
                    until = min(until, peer.busy_until)
        run = core.core.decode_steps(core.busy_until, until)
        if run is not None and run.durations:
            self._add_decodes(core, run, core.busy_until)

    def _add_decodes(self, core: _Core, run: DecodeRun, start: float) -> None:
        core.decodes = run
        self.steps += len(run.durations)
        for duration in run.durations:  # summed in the order _deliver sums them
            start += duration
        core.busy_until = start

    def _deliver(self, index: int) -> None:
        """The run on core ``index`` ended: hand over its tokens, events and load."""
        core = self._cores[index]
        routers, instance_id = self.routers, core.instance.instance_id
        step, decodes = core.step, core.decodes
        now = core.started
        if step is not None:
            now += step.duration_s
            for request_id, output in step.outputs:
                self._token(request_id, output, now)
            for event in step.events:
                for router in routers:
                    router.on_kv_event(instance_id, event)
        if decodes is not None:
            self._decodes(decodes, now)
            for event in decodes.events:
                for router in routers:
                    router.on_kv_event(instance_id, event)
        load = core.core.load()
        for router in routers:
            router.on_load(instance_id, load)
        core.step = core.decodes = None
        core.busy_until = math.inf

    def _decodes(self, run: DecodeRun, now: float) -> None:
        """Every sequence of ``run`` had one token at the end of each of its steps."""
        ends = []
        for duration in run.durations:
            now += duration
            ends.append(now)
        gaps = [later - earlier for earlier, later in pairwise(ends)]
        for request_id, tokens in run.tokens.items():
            flight = self._flights[request_id]
            result = flight.result
            result.itls_s.append(ends[0] - flight.last)
            result.itls_s.extend(gaps)
            result.output_len += len(tokens)
            flight.last = now
            if request_id in run.finished:
                self._finish(request_id, flight, now)

    def _token(self, request_id: str, output: EngineOutput, now: float) -> None:
        flight = self._flights[request_id]
        result = flight.result
        if result.output_len == 0:
            result.ttft_s = now - flight.sent
            result.cached_tokens = output.cached_tokens
            self.routers[flight.router].on_first_item(
                self._cores[flight.core].instance, flight.route
            )
            self._post(flight.router)
        else:
            result.itls_s.append(now - flight.last)
        flight.last = now
        result.output_len += len(output.tokens)
        if output.finish_reason is not None:
            self._finish(request_id, flight, now)

    def _finish(self, request_id: str, flight: _Flight, now: float) -> None:
        result = flight.result
        result.e2el_s = now - flight.sent
        result.ok, result.status = True, 200
        del self._flights[request_id]
        self.routers[flight.router].on_finished(self._cores[flight.core].instance, flight.route)
        self._post(flight.router)
        self._end(flight.request, result, now)
