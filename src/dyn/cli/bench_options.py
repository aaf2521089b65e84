"""The options of ``dyn bench`` (the load test), one annotated type each, grouped into
the help panels ``dyn bench --help`` shows. Kept apart so the callback stays readable."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dyn.bench.sweep import BENCH_KEYS
from dyn.settings import OPENAI_API_KEY_ENV

__all__ = [
    "DEFAULT_DURATION",
    "DEFAULT_GROUPS",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_OUTPUT_LEN",
    "DEFAULT_PROMPTS_PER_GROUP",
    "DEFAULT_QUESTION_LEN",
    "DEFAULT_SYSTEM_PROMPT_LEN",
    "Api",
    "ApiKey",
    "BlockSize",
    "Burst",
    "Compare",
    "Csv",
    "GraphFile",
    "Groups",
    "IgnoreEos",
    "MaxConcurrency",
    "MaxNumBatchedTokens",
    "MaxNumSeqs",
    "MetricPercentiles",
    "Model",
    "NumGpuBlocks",
    "NumPrompts",
    "OutputLen",
    "PercentileMetrics",
    "Plot",
    "PromptsPerGroup",
    "QuestionLen",
    "RequestRate",
    "RouterReplicas",
    "RouterSync",
    "RouterSyncDelayMs",
    "SaveResult",
    "Seed",
    "Sessions",
    "Sim",
    "SimSweep",
    "SimWorkers",
    "SpeedupRatio",
    "SystemPromptLen",
    "Timing",
    "TraceSpeedup",
    "Turns",
    "Url",
    "Warmup",
    "Workload",
    "Zipf",
]

# The default load: a shared-prefix workload small enough to finish in about 20 s against
# `dyn up graphs/kv_routing.yaml` on a 2-core machine (256 requests, 32 in flight, 64
# output tokens each, ~16 requests/s), yet with 32 prefixes of 512 tokens (16K tokens,
# twice what one of its workers caches) so that routing shows in the prefix hit rate.
# SGLang's defaults (64 x 16 prompts, 2048-token prefixes, 256 output tokens, no cap)
# took ten minutes there; pass them to measure at that scale.
DEFAULT_GROUPS = 32
DEFAULT_PROMPTS_PER_GROUP = 8
DEFAULT_SYSTEM_PROMPT_LEN = 512
DEFAULT_QUESTION_LEN = 64
DEFAULT_OUTPUT_LEN = 64
DEFAULT_MAX_CONCURRENCY = 32
DEFAULT_DURATION = "about 20 s against `dyn up graphs/kv_routing.yaml` on 2 cores"

_target: dict[str, Any] = {"rich_help_panel": "Server"}
_workload: dict[str, Any] = {"rich_help_panel": "Workload"}
_load: dict[str, Any] = {"rich_help_panel": "Load"}
_report: dict[str, Any] = {"rich_help_panel": "Report"}
_sim: dict[str, Any] = {"rich_help_panel": "Simulation (--sim)"}

# -- the server ---------------------------------------------------------------------------
Url = Annotated[
    str | None,
    typer.Option(
        help="Server base URL without /v1. Default: the newest live `dyn up` here.", **_target
    ),
]
Model = Annotated[
    str | None,
    typer.Option(help="One the server's /v1/models lists. Default: the first.", **_target),
]
Api = Annotated[str, typer.Option(help="completions or chat.", **_target)]
ApiKey = Annotated[
    str | None,
    typer.Option(envvar=OPENAI_API_KEY_ENV, help="Sent as a bearer token.", **_target),
]

# -- the workload -------------------------------------------------------------------------
Workload = Annotated[
    str,
    typer.Option(help="shared-prefix, multi-turn or trace:FILE (Mooncake JSONL).", **_workload),
]
Groups = Annotated[int, typer.Option(help="shared-prefix: groups.", min=1, **_workload)]
PromptsPerGroup = Annotated[
    int, typer.Option(help="shared-prefix: prompts each.", min=1, **_workload)
]
SystemPromptLen = Annotated[
    int, typer.Option(help="shared-prefix: tokens of each group's prefix.", min=0, **_workload)
]
QuestionLen = Annotated[int, typer.Option(help="Tokens of each question.", min=1, **_workload)]
OutputLen = Annotated[int, typer.Option(help="Tokens to generate.", min=1, **_workload)]
Sessions = Annotated[int, typer.Option(help="multi-turn: conversations.", min=1, **_workload)]
Turns = Annotated[int, typer.Option(help="multi-turn: turns each.", min=1, **_workload)]
TraceSpeedup = Annotated[
    float, typer.Option(help="trace: replay this many times faster.", **_workload)
]
Seed = Annotated[int, typer.Option(help="Seed of prompts and arrivals.", **_workload)]
Zipf = Annotated[
    float | None,
    typer.Option(
        help="shared-prefix: skewed group popularity; each request's group k is drawn with "
        "weight 1/(k+1)^S (0: uniform draws). Default: every group gets --prompts-per-group.",
        min=0,
        metavar="S",
        **_workload,
    ),
]

# -- how the load arrives -----------------------------------------------------------------
MaxConcurrency = Annotated[
    int | None,
    typer.Option(help="Requests in flight at most; 0: no cap.", min=0, **_load),
]
RequestRate = Annotated[
    float | None,
    typer.Option(help="Poisson arrivals per second. Default: inf (all at once).", **_load),
]
Burst = Annotated[
    bool,
    typer.Option(
        "--burst",
        help="Every request arrives at t=0 and none is held back (no --max-concurrency cap).",
        **_load,
    ),
]
NumPrompts = Annotated[
    int | None,
    typer.Option(help="Send at most this many (measured) requests.", min=1, **_load),
]
Warmup = Annotated[
    int,
    typer.Option(help="Requests sent first and excluded from every figure.", min=0, **_load),
]
IgnoreEos = Annotated[
    bool, typer.Option(help="Send ignore_eos so output lengths are exact.", **_load)
]

# -- what is reported ---------------------------------------------------------------------
MetricPercentiles = Annotated[str, typer.Option(help="Percentiles to report.", **_report)]
PercentileMetrics = Annotated[
    str, typer.Option(help="Figures to report: ttft,tpot,itl,e2el.", **_report)
]
Compare = Annotated[
    str | None,
    typer.Option(help="Run once per routing strategy, e.g. round_robin,kv (dyn only).", **_report),
]
SaveResult = Annotated[str | None, typer.Option(help="Write the result as JSON.", **_report)]
Csv = Annotated[str | None, typer.Option(help="Write one row per request as CSV.", **_report)]
Plot = Annotated[
    str | None,
    typer.Option(
        help="Draw TTFT and latency CDFs to this PNG (dyn[plot]); with --sweep, the "
        "trade-off (reuse against TTFT p50 and E2EL p90, a point per value) to this .svg.",
        **_report,
    ),
]

# -- the simulation -----------------------------------------------------------------------
Sim = Annotated[
    bool,
    typer.Option(
        "--sim",
        help="Replay in virtual time through the real router and mocker core: no server.",
        **_sim,
    ),
]
SimSweep = Annotated[
    list[str] | None,
    typer.Option(
        help="One arm per value of one key, e.g. overlap_score_weight=0,1,2,4,8; "
        "strategy=round_robin,kv; workers=2,4,8; trace_speedup=1,4. Keys: strategy, an "
        "option of the strategy (or STRATEGY.OPTION), " + ", ".join(BENCH_KEYS) + ". "
        "Prints one row per value. One --sweep per run (no grids); not with --compare.",
        metavar="KEY=V1,V2,...",
        show_default=False,
        **_sim,
    ),
]
SimWorkers = Annotated[
    int | None,
    typer.Option(help="Simulated workers. Default: the graph's, else 4.", min=1, **_sim),
]
GraphFile = Annotated[
    str | None,
    typer.Option(help="Take worker settings and strategy from this graph file.", **_sim),
]
BlockSize = Annotated[int | None, typer.Option(help="Tokens per KV block.", **_sim)]
NumGpuBlocks = Annotated[int | None, typer.Option(help="KV blocks per worker.", **_sim)]
MaxNumSeqs = Annotated[int | None, typer.Option(help="Running sequences per worker.", **_sim)]
MaxNumBatchedTokens = Annotated[int | None, typer.Option(help="Tokens per engine step.", **_sim)]
SpeedupRatio = Annotated[
    float | None, typer.Option(help="Engine step times are divided by this.", **_sim)
]
Timing = Annotated[
    str | None, typer.Option(help="polynomial or fixed:PREFILL_MS,DECODE_MS.", **_sim)
]
RouterReplicas = Annotated[
    int | None,
    typer.Option(
        help="Routers (processor replicas) fed in turn. Default: the graph's, else 1.",
        min=1,
        **_sim,
    ),
]
RouterSync = Annotated[
    bool | None,
    typer.Option(
        "--router-sync/--no-router-sync",
        help="Routers share their in-flight load (kv). Default: the graph's, else on.",
        show_default=False,
        **_sim,
    ),
]
RouterSyncDelayMs = Annotated[
    float,
    typer.Option(help="How late a sync batch reaches the other routers.", min=0, **_sim),
]
