"""``dyn bench router`` runs end to end at small sizes and prints its table."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from dyn.bench.router import run_router_bench
from dyn.cli.bench_router import router


def test_bench_router_prints_figures() -> None:
    app = typer.Typer()
    app.command()(router)
    result = CliRunner().invoke(app, ["--workers", "2,4", "--blocks", "4000", "--queries", "5"])
    assert result.exit_code == 0, result.output
    for figure in ("stored block events/s", "find_matches p99", "bytes per indexed block"):
        assert figure in result.output


def test_bench_router_rejects_bad_worker_counts() -> None:
    app = typer.Typer()
    app.command()(router)
    result = CliRunner().invoke(app, ["--workers", "two", "--blocks", "4000"])
    assert result.exit_code == 1
    assert "comma-separated whole numbers" in result.output


def test_figures_are_consistent() -> None:
    (figures,) = run_router_bench([4], 4000, 3)
    assert figures.blocks == 4000
    assert 0 < figures.nodes <= figures.blocks
    assert figures.stored_per_s > 0
    assert figures.lookup_p99_us >= figures.lookup_p50_us
    assert figures.bytes_per_block > 0
