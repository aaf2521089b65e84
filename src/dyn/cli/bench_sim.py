"""``dyn bench --sim``: the load test's workload replayed in virtual time, no server.

:mod:`dyn.cli.bench_run` checks the shared flags; this builds the workers' settings
and the requests, runs one arm per strategy and hands back results shaped like a live
run's, which are rendered and saved the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dyn.cli.bench_run import BenchOptions, Checked

__all__ = ["SimFlags", "mocker_flags", "run_sim", "run_sim_bench", "sim_flags"]


@dataclass(frozen=True)
class SimFlags:
    """The flags that shape a simulated run (``None``: from the graph, else defaults)."""

    graph: str | None
    workers: int | None
    mocker: dict[str, Any]
    routers: int | None = None
    router_sync: bool | None = None
    sync_delay_s: float = 0.0
    # A sweep's arm: this strategy instead of the graph's (its options then do not
    # apply), and these options over the graph's.
    strategy: str | None = None
    strategy_options: dict[str, Any] = field(default_factory=dict)


def sim_flags(options: BenchOptions) -> SimFlags:
    """The simulation's flags from ``dyn bench``'s options."""
    o = options
    mocker = mocker_flags(
        block_size=o.block_size,
        num_gpu_blocks=o.num_gpu_blocks,
        max_num_seqs=o.max_num_seqs,
        max_num_batched_tokens=o.max_num_batched_tokens,
        speedup_ratio=o.speedup_ratio,
        timing=o.timing,
    )
    return SimFlags(
        o.graph,
        o.workers,
        mocker,
        routers=o.router_replicas,
        router_sync=o.router_sync,
        sync_delay_s=o.router_sync_delay_ms / 1000,
    )


def run_sim_bench(options: BenchOptions, checked: Checked) -> tuple[dict[str, dict[str, Any]], int]:
    """``dyn bench --sim``: one result per arm, and how many requests each measured."""
    from dyn.cli.bench_run import shapes
    from dyn.errors import DynError

    flags = sim_flags(options)
    if options.url is not None:
        raise DynError("--sim runs no server; drop --url")
    if options.api != "completions":
        raise DynError("--sim replays completion prompts; drop --api chat")
    arms = run_sim(
        flags,
        workload=options.workload,
        shapes=shapes(options),
        seed=options.seed,
        warm_seed=checked.warm_seed,
        num_prompts=options.num_prompts,
        warmup=options.warmup,
        rate=checked.rate,
        max_concurrency=options.max_concurrency,
        ignore_eos=options.ignore_eos,
        percentiles=checked.percentiles,
        strategies=checked.strategies,
    )
    return arms, len(next(iter(arms.values()))["ttfts"])


def mocker_flags(
    *,
    block_size: int | None,
    num_gpu_blocks: int | None,
    max_num_seqs: int | None,
    max_num_batched_tokens: int | None,
    speedup_ratio: float | None,
    timing: str | None,
) -> dict[str, Any]:
    """The worker settings given on the command line, by their graph names."""
    from dyn.bench.sim_run import parse_timing

    given: dict[str, Any] = {
        "block_size": block_size,
        "num_gpu_blocks": num_gpu_blocks,
        "max_num_seqs": max_num_seqs,
        "max_num_batched_tokens": max_num_batched_tokens,
        "speedup_ratio": speedup_ratio,
    }
    out = {name: value for name, value in given.items() if value is not None}
    if timing is not None:
        out["timing"] = parse_timing(timing)
    return out


def run_sim(
    flags: SimFlags,
    *,
    workload: str,
    shapes: dict[str, Any],
    seed: int,
    warm_seed: int,
    num_prompts: int | None,
    warmup: int,
    rate: float,
    max_concurrency: int | None,
    ignore_eos: bool,
    percentiles: list[float],
    strategies: list[str],
    label: str | None = None,
) -> dict[str, dict[str, Any]]:
    """One simulated arm per strategy (the graph's, or ``kv``, without ``--compare``);
    ``label`` names the arm in the progress lines instead of its strategy."""
    from rich.console import Console

    from dyn.bench.sim import SimRequest
    from dyn.bench.sim_run import sim_setup, simulate, text_requests, trace_requests
    from dyn.bench.workloads import Words, make_workload, with_arrivals
    from dyn.errors import DynError
    from dyn.tokenizer import load_tokenizer

    setup, tokenizer = sim_setup(flags.graph, workers=flags.workers, mocker=flags.mocker)
    setup = replace(
        setup,
        routers=flags.routers if flags.routers is not None else setup.routers,
        router_sync=flags.router_sync if flags.router_sync is not None else setup.router_sync,
        sync_delay_s=flags.sync_delay_s,
    )
    if flags.strategy is not None and flags.strategy != setup.strategy:
        setup = replace(setup, strategy=flags.strategy, strategy_options={})
    if flags.strategy_options:
        setup = replace(
            setup, strategy_options={**setup.strategy_options, **flags.strategy_options}
        )
    requests: list[SimRequest]
    warm: list[SimRequest] = []
    if workload.startswith("trace:") and len(workload) > len("trace:"):
        path, speedup = workload.removeprefix("trace:"), shapes["trace_speedup"]
        requests = trace_requests(path, seed, speedup=speedup, limit=num_prompts)
        if warmup:
            warm = trace_requests(path, warm_seed, speedup=speedup, limit=warmup)
    else:
        # The same text as a live run (words of the built-in tokenizer), encoded by the
        # model's tokenizer as the processor would.
        words = Words(load_tokenizer(None))
        items = make_workload(workload, words, seed, limit=num_prompts, **shapes)
        requests = text_requests(with_arrivals(items, rate, seed), tokenizer)
        if warmup:
            warm_items = make_workload(workload, words, warm_seed, limit=warmup, **shapes)
            warm = text_requests(warm_items, tokenizer)
    if not requests:
        raise DynError(f"workload {workload} has no requests")
    # As live: the warm-up keeps no schedule, it only has to warm the caches.
    warm = [replace(request, arrival_s=None) for request in warm]

    arms: dict[str, dict[str, Any]] = {}
    console = Console(stderr=True)
    for strategy in strategies or [setup.strategy]:
        with console.status(f"simulating {label or strategy}…"):
            result = simulate(
                requests,
                setup,
                strategy,
                seed=seed,
                warmup=warm,
                max_concurrency=max_concurrency,
                ignore_eos=ignore_eos,
                percentiles=percentiles,
            )
        arms[result["strategy"]] = result
        console.print(
            f"{label or result['strategy']}: {len(requests)} requests, "
            f"{result['duration']:,.1f} s simulated in {result['sim']['wall_s']:.1f} s"
        )
    return arms
