"""``dyn bench scrape``: what a Prometheus scrape costs each process of a running graph."""

from __future__ import annotations

from typing import Annotated

import typer

from dyn.cli._common import expected_errors

__all__ = ["scrape"]


@expected_errors
def scrape(
    run: Annotated[
        str | None, typer.Option(help="A run id (or prefix). Default: the newest live run.")
    ] = None,
    scrapes: Annotated[int, typer.Option(help="Scrapes of each page, in a row.", min=1)] = 300,
    warm: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="First send N short completions, so per-worker series exist as under load.",
            min=0,
        ),
    ] = 0,
) -> None:
    """CPU milliseconds one scrape of each process page costs its process, with the
    page's size and series count, for every target of the run's targets.json on this
    machine (idle CPU measured over the same time and subtracted). Run it on an idle
    graph.

    \b
    Examples:
      dyn bench scrape --warm 200
      dyn bench scrape --run 3f2a --scrapes 1000
    """
    from rich.console import Console
    from rich.table import Table

    from dyn.bench.scrape_cost import measure_run, warm_up
    from dyn.cli._common import target_run

    status = target_run(run)
    record = status.record
    console = Console(stderr=True)
    if warm and record is not None and record.frontend_url:
        with console.status(f"warming up with {warm} requests…"):
            warm_up(record.frontend_url, warm)
    with console.status("measuring…") as shown:
        costs = measure_run(status, scrapes, progress=shown.update)
    table = Table(title=f"dyn bench scrape: run {status.run.run_id}, {scrapes} scrapes per page")
    for column in ("role", "page", "bytes", "series", "CPU ms / scrape"):
        table.add_column(column, justify="left" if column in ("role", "page") else "right")
    for cost in costs:
        table.add_row(
            cost.role,
            cost.url,
            f"{cost.page_bytes:,}",
            f"{cost.series:,}",
            f"{cost.cpu_ms_per_scrape:.2f}",
        )
    Console().print(table)
