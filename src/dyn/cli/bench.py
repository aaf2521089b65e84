"""``dyn bench``: benchmarks that print figures.

With no subcommand it load-tests an OpenAI-compatible server (by default the running
graph's frontend), optionally once per routing strategy (``--compare``); ``transport``
compares the transports and ``router`` measures the KV index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from dyn.cli import bench_router
from dyn.cli._common import expected_errors
from dyn.settings import OPENAI_API_KEY_ENV

if TYPE_CHECKING:
    from dyn.bench.load import Plan, Target
    from dyn.bench.stats import RequestResult

__all__ = ["app"]

app = typer.Typer(
    help="Load-test an OpenAI-compatible server (no subcommand), or measure dyn's parts.",
    invoke_without_command=True,
)

# The simulation's options are listed apart in --help.
_SIM = "Simulation (--sim)"
_sim: dict[str, Any] = {"rich_help_panel": _SIM}

# Warm-up requests have the workload's shape but their own text, drawn with this seed
# offset, so they warm connections and the engine without pre-filling measured prefixes.
WARMUP_SEED_OFFSET = 1_000_003


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@app.command("transport")
@expected_errors
def transport(
    transports: Annotated[
        str, typer.Option(help="Comma-separated transports to measure.")
    ] = "inproc,tcp,grpc",
    concurrency: Annotated[str, typer.Option(help="Comma-separated concurrencies.")] = "1,64",
    seconds: Annotated[float, typer.Option(help="Measuring time per figure.", min=0.1)] = 3.0,
) -> None:
    """Small unary calls/s and long-stream items/s per transport, between two processes,
    each as a fraction of a raw-socket baseline measured in the same run."""
    from rich.console import Console
    from rich.table import Table

    from dyn import plugins
    from dyn.bench.transport import run_transport_bench

    names = [plugins.canonical(n) for n in _split(transports)]
    for name in names:
        plugins.import_path("dyn.transports", name)
    levels = [int(c) for c in _split(concurrency)]
    console = Console(stderr=True)
    with console.status("measuring…") as status:
        results = run_transport_bench(
            names, levels, seconds, progress=lambda n: status.update(f"measuring {n}…")
        )
    baseline = {(r.kind, r.concurrency): r.rate for r in results if r.transport == "raw"}
    table = Table(title=f"dyn bench transport ({seconds:g} s per figure)")
    table.add_column("transport")
    for kind, unit in (("unary", "calls/s"), ("stream", "items/s")):
        for level in levels:
            table.add_column(f"{kind} {unit}\nc={level}", justify="right")
    for name in ["raw", *names]:
        cells = []
        for kind in ("unary", "stream"):
            for level in levels:
                rate = next(
                    r.rate
                    for r in results
                    if (r.transport, r.kind, r.concurrency) == (name, kind, level)
                )
                ratio = rate / baseline[(kind, level)]
                cells.append(f"{rate:,.0f}" if name == "raw" else f"{rate:,.0f} ({ratio:.0%})")
        table.add_row(name, *cells)
    Console().print(table)
    typer.echo(
        "raw: asyncio sockets with a length prefix, one connection per caller. "
        "inproc runs in this process; the others talk to a server process."
    )


app.command("router")(bench_router.router)


@app.callback()
@expected_errors
def load(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(help="Server base URL without /v1. Default: the latest `dyn up` here."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Default: the first of /v1/models.")] = None,
    api: Annotated[str, typer.Option(help="completions or chat.")] = "completions",
    api_key: Annotated[
        str | None, typer.Option(envvar=OPENAI_API_KEY_ENV, help="Sent as a bearer token.")
    ] = None,
    workload: Annotated[
        str, typer.Option(help="shared-prefix, multi-turn or trace:FILE (Mooncake JSONL).")
    ] = "shared-prefix",
    groups: Annotated[int, typer.Option(help="shared-prefix: groups.", min=1)] = 64,
    prompts_per_group: Annotated[
        int, typer.Option(help="shared-prefix: prompts each.", min=1)
    ] = 16,
    system_prompt_len: Annotated[
        int, typer.Option(help="shared-prefix: tokens of each group's prefix.", min=0)
    ] = 2048,
    question_len: Annotated[int, typer.Option(help="Tokens of each question.", min=1)] = 128,
    output_len: Annotated[int, typer.Option(help="Tokens to generate.", min=1)] = 256,
    sessions: Annotated[int, typer.Option(help="multi-turn: conversations.", min=1)] = 64,
    turns: Annotated[int, typer.Option(help="multi-turn: turns each.", min=1)] = 4,
    trace_speedup: Annotated[
        float, typer.Option(help="trace: replay this many times faster.")
    ] = 1.0,
    max_concurrency: Annotated[
        int | None, typer.Option(help="Requests in flight at most. Default: no cap.", min=1)
    ] = None,
    request_rate: Annotated[
        float | None, typer.Option(help="Poisson arrivals per second. Default: inf (all at once).")
    ] = None,
    num_prompts: Annotated[
        int | None, typer.Option(help="Send at most this many (measured) requests.", min=1)
    ] = None,
    warmup: Annotated[
        int, typer.Option(help="Requests sent first and excluded from every figure.", min=0)
    ] = 0,
    seed: Annotated[int, typer.Option(help="Seed of prompts and arrivals.")] = 0,
    ignore_eos: Annotated[
        bool, typer.Option(help="Send ignore_eos so output lengths are exact.")
    ] = True,
    metric_percentiles: Annotated[str, typer.Option(help="Percentiles to report.")] = "50,90,99",
    percentile_metrics: Annotated[
        str, typer.Option(help="Figures to report: ttft,tpot,itl,e2el.")
    ] = "ttft,tpot,itl,e2el",
    compare: Annotated[
        str | None,
        typer.Option(help="Run once per routing strategy, e.g. round_robin,kv (dyn only)."),
    ] = None,
    save_result: Annotated[str | None, typer.Option(help="Write the result as JSON.")] = None,
    csv: Annotated[str | None, typer.Option(help="Write one row per request as CSV.")] = None,
    plot: Annotated[
        str | None, typer.Option(help="Draw TTFT and latency CDFs to this PNG (dyn[plot]).")
    ] = None,
    sim: Annotated[
        bool,
        typer.Option(
            "--sim",
            help="Replay in virtual time through the real router and mocker core: no server.",
            rich_help_panel=_SIM,
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(help="Simulated workers. Default: the graph's, else 4.", min=1, **_sim),
    ] = None,
    graph: Annotated[
        str | None,
        typer.Option(help="Take worker settings and strategy from this graph file.", **_sim),
    ] = None,
    block_size: Annotated[int | None, typer.Option(help="Tokens per KV block.", **_sim)] = None,
    num_gpu_blocks: Annotated[
        int | None, typer.Option(help="KV blocks per worker.", **_sim)
    ] = None,
    max_num_seqs: Annotated[
        int | None, typer.Option(help="Running sequences per worker.", **_sim)
    ] = None,
    max_num_batched_tokens: Annotated[
        int | None, typer.Option(help="Tokens per engine step.", **_sim)
    ] = None,
    speedup_ratio: Annotated[
        float | None, typer.Option(help="Engine step times are divided by this.", **_sim)
    ] = None,
    timing: Annotated[
        str | None, typer.Option(help="polynomial or fixed:PREFILL_MS,DECODE_MS.", **_sim)
    ] = None,
    router_replicas: Annotated[
        int | None,
        typer.Option(
            help="Routers (processor replicas) fed in turn. Default: the graph's, else 1.",
            min=1,
            **_sim,
        ),
    ] = None,
    router_sync: Annotated[
        bool | None,
        typer.Option(
            "--router-sync/--no-router-sync",
            help="Routers share their in-flight load (kv). Default: the graph's, else on.",
            show_default=False,
            **_sim,
        ),
    ] = None,
    router_sync_delay_ms: Annotated[
        float, typer.Option(help="How late a sync batch reaches the other routers.", min=0, **_sim)
    ] = 0.0,
) -> None:
    """Drive an OpenAI-compatible server with streaming requests and report TTFT, TPOT,
    ITL and end-to-end latency as vLLM's benchmark does, plus dyn's prefix hit rate and
    per-worker share; or, with --sim, replay the same workload in virtual time. Subcommands
    measure dyn's own parts."""
    if ctx.invoked_subcommand is not None:
        return
    import math
    from datetime import datetime

    from dyn.bench.load import Plan, Target
    from dyn.bench.stats import METRICS
    from dyn.bench.workloads import MultiTurn, SharedPrefix, Words, make_workload, with_arrivals
    from dyn.cli.route import frontend_url
    from dyn.errors import DynError
    from dyn.tokenizer import load_tokenizer

    if api not in ("completions", "chat"):
        raise DynError(f"unknown --api {api!r}; available: completions, chat")
    try:
        percentiles = [float(p) for p in _split(metric_percentiles)]
    except ValueError:
        raise DynError(f"--metric-percentiles takes numbers, got {metric_percentiles!r}") from None
    if not all(0 <= p <= 100 for p in percentiles):
        raise DynError("--metric-percentiles must lie between 0 and 100")
    metrics = _split(percentile_metrics)
    if unknown := [m for m in metrics if m not in METRICS]:
        raise DynError(f"unknown --percentile-metrics {unknown}; available: {', '.join(METRICS)}")
    strategies = _split(compare) if compare is not None else []
    if compare is not None and (not strategies or len(set(strategies)) != len(strategies)):
        raise DynError("--compare takes distinct strategy names, e.g. round_robin,kv")
    if workload.startswith("trace:") and request_rate is not None:
        raise DynError(
            "a trace keeps its own arrival times; use --trace-speedup, not --request-rate"
        )
    rate = math.inf if request_rate is None else request_rate
    if plot:
        from dyn.bench.report import check_plotting

        check_plotting()

    from dyn.cli.bench_sim import SimFlags, mocker_flags, run_sim

    flags = SimFlags(
        graph,
        workers,
        mocker_flags(
            block_size=block_size,
            num_gpu_blocks=num_gpu_blocks,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            speedup_ratio=speedup_ratio,
            timing=timing,
        ),
        routers=router_replicas,
        router_sync=router_sync,
        sync_delay_s=router_sync_delay_ms / 1000,
    )
    if not sim and (
        flags.graph
        or flags.workers
        or flags.mocker
        or router_replicas is not None
        or router_sync is not None
        or router_sync_delay_ms
    ):
        raise DynError(
            "--graph, --workers, --router-replicas and the worker and sync settings "
            "only apply with --sim"
        )
    if sim and url is not None:
        raise DynError("--sim runs no server; drop --url")
    if sim and api != "completions":
        raise DynError("--sim replays completion prompts; drop --api chat")
    shapes: dict[str, Any] = {
        "shared": SharedPrefix(
            groups, prompts_per_group, system_prompt_len, question_len, output_len
        ),
        "multi": MultiTurn(sessions, turns, question_len, output_len),
        "trace_speedup": trace_speedup,
    }
    warm_seed = seed + WARMUP_SEED_OFFSET
    if sim:
        base = None
        arms = run_sim(
            flags,
            workload=workload,
            shapes=shapes,
            seed=seed,
            warm_seed=warm_seed,
            num_prompts=num_prompts,
            warmup=warmup,
            rate=rate,
            max_concurrency=max_concurrency,
            ignore_eos=ignore_eos,
            percentiles=percentiles,
            strategies=strategies,
        )
        count = len(next(iter(arms.values()))["ttfts"])
    else:
        base = frontend_url(url).removesuffix("/v1")
        words = Words(load_tokenizer(None))
        items = make_workload(workload, words, seed, limit=num_prompts, **shapes)
        if not items:
            raise DynError(f"workload {workload} has no requests")
        items = with_arrivals(items, rate, seed)
        warm = make_workload(workload, words, warm_seed, limit=warmup, **shapes) if warmup else []
        plan = Plan(items, warm, max_concurrency, percentiles)
        api_kind: Literal["completions", "chat"] = "chat" if api == "chat" else "completions"
        target = Target(base, model, api_kind, api_key, ignore_eos)
        arms = _run(target, plan, strategies)
        count = len(items)

    meta = {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "base_url": base,
        "api": api,
        "workload": workload,
        "num_prompts": count,
        "request_rate": "inf" if math.isinf(rate) else rate,
        "max_concurrency": max_concurrency,
        "warmup": warmup,
        "seed": seed,
    }
    arms = {name: {**meta, **result} for name, result in arms.items()}
    _render(arms, compared=bool(strategies), percentiles=percentiles, metrics=metrics)
    _save(arms, compared=bool(strategies), save_result=save_result, csv_path=csv, plot=plot)


def _run(target: Target, plan: Plan, strategies: list[str]) -> dict[str, dict[str, Any]]:
    import anyio
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from dyn.bench.load import Server, compare, run_arm

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )

    class Sink:
        task: Any = None

        def start(self, label: str, total: int) -> None:
            if self.task is not None:
                bar.remove_task(self.task)
            self.task = bar.add_task(label, total=total)

        def done(self, result: RequestResult) -> None:
            bar.advance(self.task)

    async def main() -> dict[str, dict[str, Any]]:
        async with Server(target, plan.max_concurrency) as server:
            if strategies:
                return await compare(server, plan, strategies, Sink())
            strategy = await server.strategy()
            result = await run_arm(server, plan, Sink(), strategy or "benchmark")
            return {
                strategy or "benchmark": {"strategy": strategy, "model_id": server.model, **result}
            }

    with bar:
        return anyio.run(main)


def _render(
    arms: dict[str, dict[str, Any]], *, compared: bool, percentiles: list[float], metrics: list[str]
) -> None:
    from dyn.bench.report import compare_table, result_table

    for name, result in arms.items():
        title = f" {name} " if compared else " Serving Benchmark Result "
        typer.echo(result_table(result, percentiles, metrics, title=title))
    if compared:
        typer.echo("")
        typer.echo(compare_table(arms, percentiles, metrics))


def _save(
    arms: dict[str, dict[str, Any]],
    *,
    compared: bool,
    save_result: str | None,
    csv_path: str | None,
    plot: str | None,
) -> None:
    from dyn.bench.report import plot_cdfs, write_csv, write_json

    if save_result:
        write_json(save_result, arms if compared else next(iter(arms.values())))
    if csv_path:
        write_csv(csv_path, arms)
    if plot:
        plot_cdfs(plot, arms)
