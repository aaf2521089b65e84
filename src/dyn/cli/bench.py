"""``dyn bench``: benchmarks that print figures.

With no subcommand it load-tests an OpenAI-compatible server (by default the running
graph's frontend), optionally once per routing strategy (``--compare``); ``transport``
compares the transports, ``router`` measures the KV index and ``scrape`` what a
Prometheus scrape costs each process of a running graph.
"""

from __future__ import annotations

from typing import Annotated

import typer

from dyn.cli import bench_options as opt
from dyn.cli import bench_router, bench_scrape
from dyn.cli._common import PanelledGroup, expected_errors

__all__ = ["app"]

HELP = """Load-test a server, or measure dyn's own parts.

With no subcommand: stream requests to the newest live `dyn up` here (or --url) and report
TTFT, TPOT, ITL and end-to-end latency as vLLM's benchmark does, plus dyn's prefix
cache hit rate and each worker's share; --compare runs once per routing strategy; --sim
replays the workload in virtual time with no server, and --sim --sweep once per value of
one setting (a table row and, with --plot FILE.svg, a point each).

The defaults send 256 shared-prefix requests (32 groups of 8 prompts, 512-token
prefixes, 64-token questions, 64 output tokens with ignore_eos), 32 in flight: about
20 s against `dyn up graphs/kv_routing.yaml` on 2 cores, twice that with a --compare of
two strategies.

Progress goes to stderr: a live display on a terminal, else a line every 5 s. Ctrl-C
(or SIGTERM) stops the load and prints the results of the requests that completed,
marked partial; the exit code is then 130 (143).

\b
Examples:
  dyn bench --num-prompts 200
  dyn bench --compare round_robin,kv
  dyn bench --sim --graph graphs/kv_routing.yaml
  dyn bench --sim --sweep overlap_score_weight=0,1,2,4,8 --plot sweep.svg
  dyn bench router"""

app = typer.Typer(
    help=HELP,
    invoke_without_command=True,
    cls=PanelledGroup,
)


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@app.command("transport")
@expected_errors
def transport(
    transports: Annotated[
        str, typer.Option(help="Comma-separated transports to measure.")
    ] = "inproc,tcp,grpc,nats",
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
            names,
            levels,
            seconds,
            progress=lambda n: status.update(f"measuring {n}…"),
            note=lambda line: console.print(line, markup=False),
        )
    names = [n for n in names if any(r.transport == n for r in results)]
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
app.command("scrape")(bench_scrape.scrape)


@app.callback()
@expected_errors
def load(
    ctx: typer.Context,
    url: opt.Url = None,
    model: opt.Model = None,
    api: opt.Api = "completions",
    api_key: opt.ApiKey = None,
    workload: opt.Workload = "shared-prefix",
    groups: opt.Groups = opt.DEFAULT_GROUPS,
    prompts_per_group: opt.PromptsPerGroup = opt.DEFAULT_PROMPTS_PER_GROUP,
    system_prompt_len: opt.SystemPromptLen = opt.DEFAULT_SYSTEM_PROMPT_LEN,
    question_len: opt.QuestionLen = opt.DEFAULT_QUESTION_LEN,
    output_len: opt.OutputLen = opt.DEFAULT_OUTPUT_LEN,
    sessions: opt.Sessions = 64,
    turns: opt.Turns = 4,
    trace_speedup: opt.TraceSpeedup = 1.0,
    max_concurrency: opt.MaxConcurrency = opt.DEFAULT_MAX_CONCURRENCY,
    request_rate: opt.RequestRate = None,
    burst: opt.Burst = False,
    num_prompts: opt.NumPrompts = None,
    warmup: opt.Warmup = 0,
    seed: opt.Seed = 0,
    zipf: opt.Zipf = None,
    ignore_eos: opt.IgnoreEos = True,
    metric_percentiles: opt.MetricPercentiles = "50,90,99",
    percentile_metrics: opt.PercentileMetrics = "ttft,tpot,itl,e2el",
    compare: opt.Compare = None,
    save_result: opt.SaveResult = None,
    csv: opt.Csv = None,
    plot: opt.Plot = None,
    sim: opt.Sim = False,
    sweep: opt.SimSweep = None,
    workers: opt.SimWorkers = None,
    graph: opt.GraphFile = None,
    block_size: opt.BlockSize = None,
    num_gpu_blocks: opt.NumGpuBlocks = None,
    max_num_seqs: opt.MaxNumSeqs = None,
    max_num_batched_tokens: opt.MaxNumBatchedTokens = None,
    speedup_ratio: opt.SpeedupRatio = None,
    timing: opt.Timing = None,
    router_replicas: opt.RouterReplicas = None,
    router_sync: opt.RouterSync = None,
    router_sync_delay_ms: opt.RouterSyncDelayMs = 0.0,
) -> None:
    """Drive an OpenAI-compatible server with streaming requests and report TTFT, TPOT,
    ITL and end-to-end latency as vLLM's benchmark does, plus dyn's prefix hit rate and
    per-worker share; or, with --sim, replay the same workload in virtual time. Subcommands
    measure dyn's own parts (the group's help, HELP, says more)."""
    if ctx.invoked_subcommand is not None:
        return
    from dyn.cli.bench_run import BenchOptions, run_bench
    from dyn.errors import DynError

    source = ctx.get_parameter_source("max_concurrency")
    if burst and source is not None and source.name == "COMMANDLINE":
        raise DynError("--burst sends every request at once: it takes no --max-concurrency")
    # Every parameter above, by name: the live and simulated runs read what they need.
    run_bench(BenchOptions(**ctx.params))
