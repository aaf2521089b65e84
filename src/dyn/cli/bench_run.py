"""``dyn bench`` (no subcommand): check the flags once, run the live or the simulated
load test, then render and save the arms the same way for both."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from dyn.bench.report import Interruption
    from dyn.bench.sweep import Sweep

__all__ = ["BenchOptions", "Checked", "run_bench", "shapes", "split"]

# Warm-up requests have the workload's shape but their own text, drawn with this seed
# offset, so they warm connections and the engine without pre-filling measured prefixes.
WARMUP_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class BenchOptions:
    """Every option of ``dyn bench``, by its parameter name."""

    url: str | None
    model: str | None
    api: str
    api_key: str | None
    workload: str
    groups: int
    prompts_per_group: int
    system_prompt_len: int
    question_len: int
    output_len: int
    sessions: int
    turns: int
    trace_speedup: float
    max_concurrency: int | None
    request_rate: float | None
    burst: bool
    num_prompts: int | None
    warmup: int
    seed: int
    zipf: float | None
    ignore_eos: bool
    metric_percentiles: str
    percentile_metrics: str
    compare: str | None
    save_result: str | None
    csv: str | None
    plot: str | None
    sim: bool
    sweep: list[str] | None
    workers: int | None
    graph: str | None
    block_size: int | None
    num_gpu_blocks: int | None
    max_num_seqs: int | None
    max_num_batched_tokens: int | None
    speedup_ratio: float | None
    timing: str | None
    router_replicas: int | None
    router_sync: bool | None
    router_sync_delay_ms: float


@dataclass(frozen=True)
class Checked:
    """What both modes take from the options once they are checked."""

    percentiles: list[float]
    metrics: list[str]
    strategies: list[str]
    rate: float
    warm_seed: int


def split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def run_bench(options: BenchOptions) -> None:
    """Run the load test the options describe and print (and save) its figures."""
    from dataclasses import replace
    from datetime import datetime

    # --max-concurrency 0 lifts the cap, as --burst does; downstream "no cap" is None.
    cap = None if options.burst else options.max_concurrency or None
    options = replace(options, max_concurrency=cap)
    checked = _check(options)
    stop: Interruption | None = None
    sweep: Sweep | None = None
    if options.sweep:
        from dyn.cli.bench_sweep import run_sweep_bench

        base = None
        sweep, arms, count = run_sweep_bench(options, checked, check=_check)
    elif options.sim:
        from dyn.cli.bench_sim import run_sim_bench

        base = None
        arms, count = run_sim_bench(options, checked)
    else:
        from dyn.cli.bench_live import run_live_bench

        base, outcome, count = run_live_bench(options, checked)
        arms, stop = outcome.arms, outcome.interruption
    meta = {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "base_url": base,
        "api": options.api,
        "workload": options.workload,
        "num_prompts": count,
        "request_rate": "inf" if math.isinf(checked.rate) else checked.rate,
        "max_concurrency": options.max_concurrency,
        "burst": options.burst,
        "zipf": options.zipf,
        "warmup": options.warmup,
        "seed": options.seed,
    }
    arms = {name: {**meta, **result} for name, result in arms.items()}
    compared = bool(checked.strategies) or sweep is not None
    if stop is not None:
        _stopped(stop, arms, checked.strategies)
    if arms and sweep is not None:
        from dyn.cli.bench_sweep import plot_sweep, render_sweep

        render_sweep(sweep, arms, checked)
        _save(arms, compared=compared, options=replace(options, plot=None))
        if options.plot:
            plot_sweep(options.plot, sweep, arms)
    elif arms:
        _render(arms, compared=compared, percentiles=checked.percentiles, metrics=checked.metrics)
        _save(arms, compared=compared, options=options)
    if stop is not None:
        raise typer.Exit(stop.exit_code)
    _check_failures(arms)


def _stopped(stop: Interruption, arms: dict[str, dict[str, Any]], strategies: list[str]) -> None:
    import sys

    from dyn.bench.report import stopped_line

    # On stdout with the results it qualifies, and on stderr for whoever watched the run
    # (once, when both are the same terminal).
    line = stopped_line(stop, arms, strategies)
    same_terminal = sys.stdout.isatty() and sys.stderr.isatty()
    if not (arms and same_terminal):
        typer.echo(line, err=True)
    if arms:
        typer.echo(line)


def _check_failures(arms: dict[str, dict[str, Any]]) -> None:
    """A run where every request failed is an error, said after its table (which shows
    the errors by kind): the figures of no request mean nothing."""
    from dyn.errors import DynError

    for name, result in arms.items():
        if result["completed"] == 0 and result["failed"] > 0:
            first = next((e for e in result.get("errors", []) if e), "")
            where = f" in arm {name}" if len(arms) > 1 else ""
            hint = (
                "; is the server still up?"
                if "connection" in result.get("errors_by_status", {})
                else ""
            )
            raise DynError(
                f"all {result['failed']} requests failed{where}; the first: {first}{hint}"
            )


def _check(options: BenchOptions) -> Checked:
    """The flags both modes share, checked in the order a user reads them."""
    from dyn.bench.stats import METRICS
    from dyn.errors import DynError

    if options.api not in ("completions", "chat"):
        raise DynError(f"unknown --api {options.api!r}; available: completions, chat")
    try:
        percentiles = [float(p) for p in split(options.metric_percentiles)]
    except ValueError:
        raise DynError(
            f"--metric-percentiles takes numbers, got {options.metric_percentiles!r}"
        ) from None
    if not all(0 <= p <= 100 for p in percentiles):
        raise DynError("--metric-percentiles must lie between 0 and 100")
    metrics = split(options.percentile_metrics)
    if unknown := [m for m in metrics if m not in METRICS]:
        raise DynError(f"unknown --percentile-metrics {unknown}; available: {', '.join(METRICS)}")
    strategies = split(options.compare) if options.compare is not None else []
    if options.compare is not None and (not strategies or len(set(strategies)) != len(strategies)):
        raise DynError("--compare takes distinct strategy names, e.g. round_robin,kv")
    if options.url is not None and not options.url.startswith(("http://", "https://")):
        raise DynError(f"--url takes http://HOST:PORT (or https://), got {options.url!r}")
    if options.trace_speedup <= 0:
        raise DynError(f"--trace-speedup must be positive, got {options.trace_speedup:g}")
    tracing = options.workload.startswith("trace:")
    if tracing and options.request_rate is not None:
        raise DynError(
            "a trace keeps its own arrival times; use --trace-speedup, not --request-rate"
        )
    if options.burst and (options.request_rate is not None or tracing):
        what = "--request-rate" if options.request_rate is not None else "a trace's own times"
        raise DynError(f"--burst sends every request at t=0: it does not go with {what}")
    if options.zipf is not None and options.workload != "shared-prefix":
        raise DynError(f"--zipf skews shared-prefix groups; the workload is {options.workload}")
    rate = math.inf if options.request_rate is None else options.request_rate
    if options.sweep:
        _check_sweep(options)
    elif options.plot:
        from dyn.bench.report import check_plotting

        check_plotting()
    warm_seed = options.seed + WARMUP_SEED_OFFSET
    return Checked(percentiles, metrics, strategies, rate, warm_seed)


def _check_sweep(options: BenchOptions) -> None:
    from dyn.errors import DynError

    assert options.sweep
    if len(options.sweep) > 1:
        raise DynError(
            f"one --sweep per run, got {len(options.sweep)}: "
            f"{' and '.join(options.sweep)}; a grid of two keys is not supported"
        )
    if not options.sim:
        raise DynError("--sweep runs only with --sim (each arm is a simulated run); add --sim")
    if options.compare is not None:
        raise DynError(
            "--sweep and --compare both choose the arms; sweep the strategies with "
            "--sweep strategy=" + ",".join(split(options.compare))
        )
    if options.plot and not options.plot.lower().endswith(".svg"):
        raise DynError(
            f"with --sweep, --plot draws an SVG: give a file ending in .svg, got {options.plot!r}"
        )


def shapes(options: BenchOptions) -> dict[str, Any]:
    """The workload generators' shapes, by the names ``make_workload`` takes."""
    from dyn.bench.workloads import MultiTurn, SharedPrefix

    o = options
    return {
        "shared": SharedPrefix(
            o.groups,
            o.prompts_per_group,
            o.system_prompt_len,
            o.question_len,
            o.output_len,
            zipf=o.zipf,
        ),
        "multi": MultiTurn(o.sessions, o.turns, o.question_len, o.output_len),
        "trace_speedup": o.trace_speedup,
    }


def _render(
    arms: dict[str, dict[str, Any]], *, compared: bool, percentiles: list[float], metrics: list[str]
) -> None:
    from dyn.bench.report import compare_table, result_table

    for name, result in arms.items():
        title = f" {name} " if compared else " Serving Benchmark Result "
        if result.get("stopped"):
            title = f"{title}(partial) "
        typer.echo(result_table(result, percentiles, metrics, title=title))
    if compared:
        typer.echo("")
        typer.echo(compare_table(arms, percentiles, metrics))


def _save(arms: dict[str, dict[str, Any]], *, compared: bool, options: BenchOptions) -> None:
    from dyn.bench.report import plot_cdfs, write_csv, write_json

    if options.save_result:
        write_json(options.save_result, arms if compared else next(iter(arms.values())))
    if options.csv:
        write_csv(options.csv, arms)
    if options.plot:
        plot_cdfs(options.plot, arms)
