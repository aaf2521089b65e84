"""``dyn bench router``: events/s, lookup latency and memory of the KV index."""

from __future__ import annotations

from typing import Annotated

import typer

from dyn.cli._common import expected_errors

__all__ = ["router"]


@expected_errors
def router(
    workers: Annotated[str, typer.Option(help="Comma-separated worker counts.")] = "8,64",
    blocks: Annotated[
        int, typer.Option(help="Blocks indexed in total, spread over the workers.", min=1000)
    ] = 1_000_000,
    queries: Annotated[int, typer.Option(help="Lookups timed per worker count.", min=1)] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic cache.")] = 0,
) -> None:
    """Block events applied per second, find_matches latency for an 8,192-token prompt,
    and bytes per indexed block (block size 16), each beside a plain-dict baseline
    measured in the same run."""
    from rich.console import Console
    from rich.table import Table

    from dyn.bench.router import BLOCK_SIZE, PROMPT_TOKENS, run_router_bench
    from dyn.errors import DynError

    try:
        counts = [int(part) for part in workers.split(",") if part.strip()]
    except ValueError:
        raise DynError(f"--workers takes comma-separated whole numbers, got {workers!r}") from None
    if not counts or min(counts) < 1:
        raise DynError("--workers needs at least one worker count of 1 or more")
    console = Console(stderr=True)
    with console.status("measuring…") as status:
        results = run_router_bench(counts, blocks, queries, seed=seed, progress=status.update)
    table = Table(
        title=f"dyn bench router: block size {BLOCK_SIZE}, {blocks:,} blocks, {queries} lookups"
    )
    table.add_column("figure")
    for r in results:
        table.add_column(f"{r.workers} workers", justify="right")

    def millions(value: float) -> str:
        return f"{value / 1e6:.2f} M"

    rows: list[tuple[str, list[str]]] = [
        ("blocks indexed", [f"{r.blocks:,}" for r in results]),
        ("tree nodes", [f"{r.nodes:,}" for r in results]),
        ("stored block events/s", [millions(r.stored_per_s) for r in results]),
        ("  dict insert/s", [millions(r.dict_insert_per_s) for r in results]),
        ("  ratio", [f"{r.stored_per_s / r.dict_insert_per_s:.0%}" for r in results]),
        ("removed block events/s", [millions(r.removed_per_s) for r in results]),
        ("  dict delete/s", [millions(r.dict_pop_per_s) for r in results]),
        ("  ratio", [f"{r.removed_per_s / r.dict_pop_per_s:.0%}" for r in results]),
        (
            f"find_matches p50 µs, {PROMPT_TOKENS} tokens",
            [f"{r.lookup_p50_us:,.0f}" for r in results],
        ),
        ("find_matches p99 µs", [f"{r.lookup_p99_us:,.0f}" for r in results]),
        (
            "  dict probe per block p50/p99 µs",
            [f"{r.probe_p50_us:,.0f} / {r.probe_p99_us:,.0f}" for r in results],
        ),
        (
            "  ratio p50/p99",
            [
                f"{r.lookup_p50_us / r.probe_p50_us:.1f}× / {r.lookup_p99_us / r.probe_p99_us:.1f}×"
                for r in results
            ],
        ),
        ("hashing p50 µs (apart)", [f"{r.hashing_p50_us:,.0f}" for r in results]),
        ("bytes per indexed block", [f"{r.bytes_per_block:,.0f}" for r in results]),
        ("  dict bytes per entry", [f"{r.dict_bytes_per_entry:,.0f}" for r in results]),
        ("  ratio", [f"{r.bytes_per_block / r.dict_bytes_per_entry:.0%}" for r in results]),
    ]
    for name, cells in rows:
        table.add_row(name, *cells)
    Console().print(table)
    typer.echo(
        "dict rows: a plain dict of block hash -> {worker} in the same run. "
        "Targets: >= 1 M block events/s, find_matches p99 <= 200 µs at 64 workers."
    )
