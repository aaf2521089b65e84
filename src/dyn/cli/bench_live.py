"""``dyn bench`` against a live server: build the requests, drive the server with them
(once per strategy with ``--compare``) behind a progress bar, hand back the arms.

When the server is the frontend of a `dyn up` run on this machine, the run record names
its processes (their CPU is read around each arm) and its admin token (for the list of
every process's metrics page)."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio

from dyn.bench.report import Interruption

if TYPE_CHECKING:
    from dyn.bench.load import Plan, Target
    from dyn.bench.run_cpu import CpuMeter
    from dyn.cli.bench_progress import ProgressSink
    from dyn.cli.bench_run import BenchOptions, Checked

__all__ = ["LiveOutcome", "run_live_bench"]

TICK_S = 1.0  # how often the progress display is refreshed when no request ends
# How long dyn bench waits for a run that is still starting (`dyn up GRAPH &` just before).
START_WAIT_S = 120.0


@dataclass(frozen=True)
class LiveOutcome:
    """One result per arm that measured something, and why the run stopped early."""

    arms: dict[str, dict[str, Any]]
    interruption: Interruption | None = None


def run_live_bench(options: BenchOptions, checked: Checked) -> tuple[str, LiveOutcome, int]:
    """The server's base URL, the outcome, and how many requests each arm planned."""
    from dyn.bench.load import Plan, Target
    from dyn.bench.workloads import Words, make_workload, with_arrivals
    from dyn.cli.bench_run import shapes
    from dyn.cli.bench_sim import sim_flags
    from dyn.cli.route import frontend_url
    from dyn.errors import DynError
    from dyn.tokenizer import load_tokenizer

    o = options
    flags = sim_flags(o)  # built first, as with --sim: a bad --timing is reported first
    given = flags.graph or flags.workers or flags.mocker or o.router_sync_delay_ms
    if given or o.router_replicas is not None or o.router_sync is not None:
        raise DynError(
            "--graph, --workers, --router-replicas and the worker and sync settings "
            "only apply with --sim"
        )
    shaped = shapes(o)
    try:
        base = frontend_url(o.url, wait_s=START_WAIT_S).removesuffix("/v1")
    except DynError as exc:
        # `dyn route`'s wording, with what a first-time user of dyn bench would run.
        what = str(exc).split(";")[0]
        raise DynError(
            f"{what}: nothing for dyn bench to load; "
            "start a graph with `dyn up graphs/kv_routing.yaml`, or pass --url"
        ) from None
    words = Words(load_tokenizer(None))
    items = make_workload(o.workload, words, o.seed, limit=o.num_prompts, **shaped)
    if not items:
        raise DynError(f"workload {o.workload} has no requests")
    items = with_arrivals(items, checked.rate, o.seed)
    warm = (
        make_workload(o.workload, words, checked.warm_seed, limit=o.warmup, **shaped)
        if o.warmup
        else []
    )
    plan = Plan(items, warm, o.max_concurrency, checked.percentiles)
    api_kind: Literal["completions", "chat"] = "chat" if o.api == "chat" else "completions"
    target = Target(base, o.model, api_kind, o.api_key, o.ignore_eos)
    target, cpu, not_local = _local_run(target, o.url)
    return base, _run(target, plan, checked.strategies, cpu, not_local), len(items)


def _local_run(target: Target, url: str | None) -> tuple[Target, CpuMeter | None, str | None]:
    """The target with what the run record adds, a meter of the run's processes, and
    (when the server is no `dyn up` run on this machine: no meter) a note saying so."""
    from dataclasses import replace

    from dyn.bench.run_cpu import CpuMeter, find_local_run, run_processes
    from dyn.settings import Settings

    record = find_local_run(url)
    if record is None:
        note = f"{target.base_url} is not a `dyn up` run on this machine: no server CPU figures"
        return replace(target, admin_token=Settings.from_env().admin_token or None), None, note
    pages = tuple(role.metrics_url for role in record.roles if role.metrics_url)
    token = record.admin_token or Settings.from_env().admin_token or None
    meter = CpuMeter(run_processes(record))
    return replace(target, admin_token=token, metrics_urls=pages), meter, None


@dataclass
class Stopping:
    """The first SIGINT or SIGTERM sets ``stop``, which asks the load to stop (the arm
    running keeps what ended); a second one abandons the run at once."""

    signal: signal.Signals | None = None
    abandoned: bool = False

    async def watch(
        self, stop: anyio.Event, sink: ProgressSink, everything: anyio.CancelScope
    ) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
            async for sig in received:
                if self.signal is None:
                    self.signal = signal.Signals(sig)
                    stop.set()
                    sink.note(f"{SIGNAL_NAMES[self.signal]}: stopping; again to abandon the run")
                else:
                    self.abandoned = True
                    everything.cancel()


SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


async def _tick(sink: ProgressSink) -> None:
    while True:
        await anyio.sleep(TICK_S)
        sink.tick()


def _run(
    target: Target,
    plan: Plan,
    strategies: list[str],
    cpu: CpuMeter | None,
    not_local: str | None,
) -> LiveOutcome:
    from dyn.bench.load import Server, compare, run_arm
    from dyn.cli.bench_progress import make_sink

    sink = make_sink(strategies)
    stopping = Stopping()
    arms: dict[str, dict[str, Any]] = {}

    async def load(stop: anyio.Event) -> None:
        async with Server(target, plan.max_concurrency) as server:
            if not_local:
                sink.note(not_local)
            if strategies:
                arms.update(await compare(server, plan, strategies, sink, cpu, stop, sink.note))
                return
            strategy = await server.strategy()
            name = strategy or "benchmark"
            result = await run_arm(server, plan, sink, name, cpu, stop)
            if result is not None:
                arms[name] = {"strategy": strategy, "model_id": server.model, **result}

    async def main() -> None:
        stop = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(stopping.watch, stop, sink, tasks.cancel_scope)
            tasks.start_soon(_tick, sink)
            try:
                await load(stop)
            finally:
                tasks.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        sink.close()
    if stopping.signal is None:
        return LiveOutcome(arms)
    running = sink.tally.label if sink.tally is not None else None
    return LiveOutcome(
        arms,
        Interruption(
            SIGNAL_NAMES[stopping.signal], 128 + stopping.signal, running, stopping.abandoned
        ),
    )
