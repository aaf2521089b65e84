"""The README as a first-time reader meets it: nothing it uses before saying how, nothing it
points to that is not there. (tests/e2e/test_newcomer.py runs its commands.)"""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from dyn.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
ACTIVATE = "source .venv/bin/activate"


def _command_lines() -> list[tuple[int, str]]:
    """(offset in the README, line) of every line inside a fenced or indented code block."""
    lines: list[tuple[int, str]] = []
    offset = 0
    fenced = False
    for line in README.splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        elif fenced or line.startswith("    "):
            lines.append((offset, line.strip().removeprefix("$ ")))
        offset += len(line)
    return lines


def test_plain_dyn_is_used_only_after_saying_how_to_put_it_on_path() -> None:
    bare = [(at, line) for at, line in _command_lines() if re.match(r"dyn (?!-)", line)]
    assert bare, "the README shows no plain `dyn` command (the test would pass vacuously)"
    first_at, first = bare[0]
    assert ACTIVATE in README[:first_at], f"`{first}` comes before the README says {ACTIVATE}"


def test_every_bench_subcommand_is_described() -> None:
    shown = CliRunner().invoke(app, ["bench", "--help"], env={"COLUMNS": "200"}).output
    # The help's command list: a line per subcommand, its name first.
    listed = re.findall(r"^[ │]*(\w+)\s{2,}\S", shown.split("Commands")[-1], re.M)
    assert {"transport", "router"} <= set(listed), shown
    for name in listed:
        # Described: a sentence says what it measures, not only a mention of its name.
        assert re.search(rf"`dyn bench {name}`[^.]*\bmeasures\b", README), name


def test_the_multinode_figure_script_says_what_it_needs() -> None:
    (paragraph,) = [p for p in README.split("\n\n") if "bench_multinode.py" in p]
    for need in ("sudo", "wrk", "[test]"):
        assert need in paragraph, (need, paragraph)
