"""``dyn bench``: benchmarks that print figures. ``transport`` compares the transports."""

from __future__ import annotations

from typing import Annotated

import typer

from dyn.cli import bench_router
from dyn.cli._common import expected_errors

__all__ = ["app"]

app = typer.Typer(help="Measure dyn: transports, the KV router.")


def _csv(value: str) -> list[str]:
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

    names = [plugins.canonical(n) for n in _csv(transports)]
    for name in names:
        plugins.import_path("dyn.transports", name)
    levels = [int(c) for c in _csv(concurrency)]
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
