"""``dyn bench --sim --sweep KEY=V1,V2,...``: one simulated arm per value, one table.

Every arm is planned (and so checked) before the first runs, so a bad value fails at
once rather than after minutes of earlier arms. An arm is the run ``dyn bench --sim``
would make with that value given on the command line: a bench option replaced, the
strategy replaced, or one strategy option set over the graph's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import typer

from dyn.bench.sweep import Sweep, SweepValue

if TYPE_CHECKING:
    from dyn.cli.bench_run import BenchOptions, Checked
    from dyn.cli.bench_sim import SimFlags

__all__ = ["plot_sweep", "render_sweep", "run_sweep_bench"]

# The figures the plot draws against prefix reuse.
PLOT_PERCENTILE = 90.0


@dataclass(frozen=True)
class _Arm:
    value: SweepValue
    options: BenchOptions
    checked: Checked
    flags: SimFlags


def run_sweep_bench(
    options: BenchOptions, checked: Checked, *, check: Callable[[BenchOptions], Checked]
) -> tuple[Sweep, dict[str, dict[str, Any]], int]:
    """The sweep, one result per value (keyed ``KEY=VALUE``), and requests per arm."""
    from dyn.bench.sim_run import sim_setup
    from dyn.bench.sweep import resolve_sweep, split_sweep
    from dyn.cli.bench_run import shapes
    from dyn.cli.bench_sim import run_sim, sim_flags
    from dyn.errors import DynError

    assert options.sweep  # run_bench dispatches here only then
    key, texts = split_sweep(options.sweep[0])
    if options.url is not None:
        raise DynError("--sim runs no server; drop --url")
    if options.api != "completions":
        raise DynError("--sim replays completion prompts; drop --api chat")
    flags = sim_flags(options)
    base = sim_setup(flags.graph, workers=flags.workers, mocker=flags.mocker)[0]
    sweep = resolve_sweep(
        key, texts, strategy=base.strategy, option_names=_options_of(base.strategy)
    )
    graph_options = dict(base.strategy_options)
    plans = [
        _plan(sweep, value, options, check, base.strategy, graph_options) for value in sweep.values
    ]
    arms: dict[str, dict[str, Any]] = {}
    for number, arm in enumerate(plans, 1):
        label = sweep.label(arm.value)
        o = arm.options
        results = run_sim(
            arm.flags,
            workload=o.workload,
            shapes=shapes(o),
            seed=o.seed,
            warm_seed=arm.checked.warm_seed,
            num_prompts=o.num_prompts,
            warmup=o.warmup,
            rate=arm.checked.rate,
            max_concurrency=o.max_concurrency,
            ignore_eos=o.ignore_eos,
            percentiles=sorted({*arm.checked.percentiles, PLOT_PERCENTILE}),
            strategies=[],
            label=f"arm {number}/{len(plans)} {label}",
        )
        (result,) = results.values()
        rate = arm.checked.rate
        arms[label] = {
            **result,
            # What the run's common figures would say wrongly for this arm.
            "request_rate": "inf" if math.isinf(rate) else rate,
            "max_concurrency": o.max_concurrency,
            "sweep": {"key": sweep.key, "value": arm.value.value},
        }
    return sweep, arms, len(next(iter(arms.values()))["ttfts"])


def _options_of(strategy: str) -> list[str] | None:
    """The options the strategy's class declares (``OPTIONS``); ``None``: it takes none."""
    from dyn import plugins

    names = getattr(plugins.load("dyn.routers", strategy), "OPTIONS", None)
    return list(names) if names else None


def _plan(
    sweep: Sweep,
    value: SweepValue,
    options: BenchOptions,
    check: Callable[[BenchOptions], Checked],
    graph_strategy: str,
    graph_options: Mapping[str, Any],
) -> _Arm:
    from dyn import plugins
    from dyn.bench.sim_run import sim_setup
    from dyn.cli.bench_sim import sim_flags
    from dyn.errors import DynError

    label = sweep.label(value)
    try:
        arm_options = options
        if sweep.kind == "bench":
            arm_options = _with_bench_value(options, sweep.key, value.value)
        arm_checked = check(arm_options)
        flags = sim_flags(arm_options)
        # The workers' settings, checked now (a bad --sweep num_gpu_blocks value, say).
        sim_setup(flags.graph, workers=flags.workers, mocker=flags.mocker)
        if sweep.kind == "strategy":
            plugins.import_path("dyn.routers", value.value)
            flags = replace(flags, strategy=value.value)
        elif sweep.kind == "option":
            assert sweep.strategy is not None
            assert sweep.option is not None
            strategy = plugins.canonical(sweep.strategy)
            declared = _options_of(strategy) or []
            if sweep.option not in declared:
                valid = ", ".join(sorted(declared)) or "none"
                raise DynError(
                    f"the {strategy} strategy has no option {sweep.option!r}; its options: {valid}"
                )
            setting = {sweep.option: value.value}
            # As the arm's router will be made: the graph's options apply to its own strategy.
            base = dict(graph_options) if strategy == plugins.canonical(graph_strategy) else {}
            plugins.load("dyn.routers", strategy)({**base, **setting}, seed=0)
            flags = replace(flags, strategy=strategy, strategy_options=setting)
    except DynError as exc:
        raise DynError(f"--sweep {label}: {exc}") from exc
    return _Arm(value, arm_options, arm_checked, flags)


def _with_bench_value(options: BenchOptions, key: str, value: float) -> BenchOptions:
    from dyn.errors import DynError

    if key == "trace_speedup" and not options.workload.startswith("trace:"):
        raise DynError(f"trace_speedup applies to trace:FILE workloads, not {options.workload}")
    if key == "max_concurrency":
        if options.burst:
            raise DynError("--burst sends every request at once: it takes no max_concurrency")
        return replace(options, max_concurrency=int(value) or None)  # 0: no cap, as the flag
    given: dict[str, Any] = {key: value}
    return replace(options, **given)


def render_sweep(sweep: Sweep, arms: Mapping[str, Mapping[str, Any]], checked: Checked) -> None:
    from dyn.bench.sweep import sweep_table

    first = next(iter(arms.values()))
    typer.echo(f"Sweep of {sweep.key}: {_context(sweep, first)}")
    typer.echo("")
    typer.echo(sweep_table(sweep, arms, checked.percentiles, checked.metrics))


def _context(sweep: Sweep, result: Mapping[str, Any]) -> str:
    """What every arm shares, in a line: strategy, workers and cache, workload, load."""
    sim = result["sim"]
    mocker = sim["mocker"]
    parts = []
    if sweep.kind != "strategy":
        parts.append(str(result["strategy"]))
    if sweep.key != "workers":
        parts.append(f"{sim['workers']} workers")
    if sweep.key != "num_gpu_blocks":
        parts.append(f"{mocker['num_gpu_blocks']:,} blocks of {mocker['block_size']}")
    parts.append(f"{result['workload']}, {result['num_prompts']:,} requests")
    if sweep.key != "max_concurrency" and result["max_concurrency"] is not None:
        parts.append(f"{result['max_concurrency']} in flight")
    return ", ".join(parts)


def plot_sweep(path: str, sweep: Sweep, arms: Mapping[str, Mapping[str, Any]]) -> None:
    """Prefix reuse against TTFT p50 and E2EL p90, a point per value, as an SVG."""
    from dyn.bench.stats import percentile_key
    from dyn.bench.svg_plot import Panel, tradeoff_svg, write_tradeoff_svg

    ran = [
        (value, arms[sweep.label(value)]) for value in sweep.values if sweep.label(value) in arms
    ]
    first = ran[0][1]
    tail = f"{percentile_key(PLOT_PERCENTILE)}_e2el_ms"
    document = tradeoff_svg(
        [value.text for value, _ in ran],
        [result["prefix_hit_rate"] * 100 for _, result in ran],
        [
            Panel("TTFT p50", "TTFT p50 (ms)", [r["median_ttft_ms"] for _, r in ran]),
            Panel(
                "End-to-end latency p90",
                "E2EL p90 (ms)",
                [r[tail] for _, r in ran],
            ),
        ],
        title=f"Sweep of {sweep.key}: prefix reuse against latency",
        subtitle=_context(sweep, first) + " (simulated)",
        x_label="prefix reuse (% of prompt tokens cached)",
    )
    write_tradeoff_svg(path, document)
