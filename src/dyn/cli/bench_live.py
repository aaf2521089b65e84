"""``dyn bench`` against a live server: build the requests, drive the server with them
(once per strategy with ``--compare``) behind a progress bar, hand back the arms.

When the server is the frontend of a `dyn up` run on this machine, the run record names
its processes (their CPU is read around each arm) and its admin token (for the list of
every process's metrics page)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from dyn.bench.load import Plan, Target
    from dyn.bench.run_cpu import CpuMeter
    from dyn.bench.stats import RequestResult
    from dyn.cli.bench_run import BenchOptions, Checked

__all__ = ["run_live_bench"]


def run_live_bench(
    options: BenchOptions, checked: Checked
) -> tuple[str, dict[str, dict[str, Any]], int]:
    """The server's base URL, one result per arm, and how many requests each measured."""
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
    base = frontend_url(o.url).removesuffix("/v1")
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
    target, cpu = _local_run(target, o.url)
    return base, _run(target, plan, checked.strategies, cpu), len(items)


def _local_run(target: Target, url: str | None) -> tuple[Target, CpuMeter | None]:
    """The target with what the run record adds, and a meter of the run's processes;
    said once, and no meter, when the server is no `dyn up` run on this machine."""
    from dataclasses import replace

    import typer

    from dyn.bench.run_cpu import CpuMeter, find_local_run, run_processes
    from dyn.settings import Settings

    record = find_local_run(url)
    if record is None:
        typer.echo(
            f"{target.base_url} is not a `dyn up` run on this machine: no server CPU figures",
            err=True,
        )
        return replace(target, admin_token=Settings.from_env().admin_token or None), None
    pages = tuple(role.metrics_url for role in record.roles if role.metrics_url)
    token = record.admin_token or Settings.from_env().admin_token or None
    return replace(target, admin_token=token, metrics_urls=pages), CpuMeter(run_processes(record))


def _run(
    target: Target, plan: Plan, strategies: list[str], cpu: CpuMeter | None
) -> dict[str, dict[str, Any]]:
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
                return await compare(server, plan, strategies, Sink(), cpu)
            strategy = await server.strategy()
            result = await run_arm(server, plan, Sink(), strategy or "benchmark", cpu)
            return {
                strategy or "benchmark": {"strategy": strategy, "model_id": server.model, **result}
            }

    with bar:
        return anyio.run(main)
