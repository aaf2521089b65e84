"""`dyn bench --sim --sweep` as a user runs it: the real command in its own process.

A small shared-prefix workload (a few dozen requests, no server) swept over a strategy
option, the worker count and the strategy: one table row per value, arms that really
differ in the swept key, and an SVG plot that parses with a point per value.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SVG = "{http://www.w3.org/2000/svg}"
# 8 groups of 4 prompts sharing a 128-token prefix, 4 workers that each cache about
# three prefixes: where a request goes decides whether its prefix is cached.
WORKLOAD = [
    "--workload", "shared-prefix", "--groups", "8", "--prompts-per-group", "4",
    "--system-prompt-len", "128", "--question-len", "16", "--output-len", "8",
    "--max-concurrency", "8", "--block-size", "16", "--num-gpu-blocks", "40",
]  # fmt: skip


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dyn", "bench", "--sim", *WORKLOAD, *args],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )


def _rows(stdout: str, key: str) -> list[list[str]]:
    """The table's rows (its cells), below the header that starts with ``key``."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [key])
    return [line.split() for line in lines[start + 2 :] if line.strip()]


def _saved(path: Path) -> dict[str, dict[str, Any]]:
    arms: dict[str, dict[str, Any]] = json.loads(path.read_text())
    return arms


def test_an_overlap_weight_sweep_prints_a_row_per_value_and_plots_them(tmp_path: Path) -> None:
    out, plot = tmp_path / "r.json", tmp_path / "sweep.svg"
    done = _bench(
        "--workers", "4", "--sweep", "overlap_score_weight=0,1,8",
        "--save-result", str(out), "--plot", str(plot),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = _rows(done.stdout, "overlap_score_weight")
    assert [row[0] for row in rows] == ["0", "1", "8"]
    for number, value in enumerate(("0", "1", "8"), 1):
        assert f"arm {number}/3 overlap_score_weight={value}" in done.stderr
    arms = _saved(out)
    assert list(arms) == [f"overlap_score_weight={v}" for v in ("0", "1", "8")]
    assert [arm["sweep"]["value"] for arm in arms.values()] == [0, 1, 8]
    for arm in arms.values():
        assert (arm["completed"], arm["failed"]) == (32, 0)
    # Weight 0 ignores the cache (load alone decides); 8 follows it.
    reuse = {name: arm["prefix_hit_rate"] for name, arm in arms.items()}
    assert reuse["overlap_score_weight=8"] > reuse["overlap_score_weight=0"] + 0.1
    # The table shows the saved figures, row by row.
    assert [row[1] for row in rows] == [f"{r:.1%}" for r in reuse.values()]

    root = ET.parse(plot).getroot()
    assert root.tag == f"{SVG}svg"
    panels = root.findall(f"{SVG}g[@class='panel']")
    assert len(panels) == 2
    for panel in panels:
        assert len(panel.findall(f"{SVG}circle[@class='point']")) == 3
        labels = [t.text for t in panel.findall(f"{SVG}text[@class='point-label']")]
        assert labels == ["0", "1", "8"]


def test_a_worker_sweep_changes_the_workers(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    done = _bench("--sweep", "workers=2,4", "--save-result", str(out))
    assert done.returncode == 0, done.stderr
    assert [row[0] for row in _rows(done.stdout, "workers")] == ["2", "4"]
    arms = _saved(out)
    for count in (2, 4):
        arm = arms[f"workers={count}"]
        assert arm["sim"]["workers"] == count
        assert set(arm["request_workers"]) == {f"sim-{i}" for i in range(count)}
        assert len(arm["worker_request_share"]) == count


def test_a_strategy_sweep_runs_each_strategy(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    done = _bench("--sweep", "strategy=round_robin,kv", "--save-result", str(out))
    assert done.returncode == 0, done.stderr
    arms = _saved(out)
    assert [arm["strategy"] for arm in arms.values()] == ["round_robin", "kv"]
    # Round robin gives each worker the same share whatever the prefixes.
    assert set(arms["strategy=round_robin"]["worker_request_share"].values()) == {0.25}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sweep", "overlap_score_weight=0,8", "--plot", "x.png"], "ending in .svg"),
        (["--sweep", "wrokers=2,4"], "unknown --sweep key 'wrokers'; valid: strategy"),
        (["--sweep", "workers=2", "--sweep", "workers=4"], "one --sweep per run"),
        (["--sweep", "temperature=0,-1"], "--sweep temperature=-1:"),
    ],
)
def test_errors_are_one_line_before_any_arm_runs(args: list[str], message: str) -> None:
    done = _bench(*args)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines == [lines[0]]
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert "arm 1/" not in done.stderr
