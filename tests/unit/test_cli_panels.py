"""Long option lists are grouped under headings in --help (plain text, no rich)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from dyn.cli.app import app

runner = CliRunner()


def _sections(output: str) -> dict[str, str]:
    """Each top-level heading ("Name:") of a help text, with the text under it."""
    sections: dict[str, str] = {}
    current = ""
    for line in output.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = line[:-1]
            sections[current] = ""
        elif current:
            sections[current] += line + "\n"
    return sections


@pytest.mark.parametrize(
    ("args", "panel", "options"),
    [
        (["bench"], "Server", ["--url", "--api-key"]),
        (["bench"], "Workload", ["--workload", "--prompts-per-group", "--seed"]),
        (["bench"], "Load", ["--max-concurrency", "--request-rate", "--warmup"]),
        (["bench"], "Report", ["--compare", "--save-result", "--plot"]),
        (["bench"], "Simulation (--sim)", ["--sim", "--workers", "--router-sync-delay-ms"]),
        (["up"], "Graph overrides", ["--port", "--set", "--transport", "--discovery"]),
        (["up"], "Running", ["--launcher", "--api-key", "--detach"]),
        (["up"], "Logs", ["--log-level", "--json-logs"]),
    ],
)
def test_options_are_listed_under_their_panel(
    args: list[str], panel: str, options: list[str]
) -> None:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    sections = _sections(result.output)
    assert panel in sections, list(sections)
    for option in options:
        assert option in sections[panel], (panel, option)
        assert option not in sections["Options"], option


def test_bench_help_still_lists_its_commands() -> None:
    result = runner.invoke(app, ["bench", "--help"])
    assert {"transport", "router"} <= set(_sections(result.output)["Commands"].split())
