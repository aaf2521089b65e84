"""The import layering in pyproject's [tool.importlinter] holds, and would catch a breach.

The source tree is copied so that a breach can be planted without touching the real one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
GRAPH_CONTRACT = "The graph spec is data: it imports neither the runtime nor the roles"

pytestmark = pytest.mark.timeout(300)


def _copy_tree(tmp_path: Path) -> Path:
    """src/dyn and a pyproject holding only the import-linter config, under tmp_path."""
    shutil.copytree(ROOT / "src" / "dyn", tmp_path / "src" / "dyn")
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text[text.index("[tool.importlinter]") :]
    assert "\n[tool." not in section, "keep [tool.importlinter] last in pyproject.toml"
    (tmp_path / "pyproject.toml").write_text(section, encoding="utf-8")
    return tmp_path


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(tree / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_the_contracts_have_no_exceptions() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    linter = config["tool"]["importlinter"]
    assert linter.get("exclude_type_checking_imports", False) is False
    assert linter["contracts"]
    for contract in linter["contracts"]:
        assert "ignore_imports" not in contract, contract["name"]


def test_the_source_keeps_its_layers(tmp_path: Path) -> None:
    result = _lint_imports(_copy_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{GRAPH_CONTRACT} KEPT" in result.stdout


def test_the_graph_importing_the_runtime_breaks_a_contract(tmp_path: Path) -> None:
    tree = _copy_tree(tmp_path)
    model = tree / "src" / "dyn" / "graph" / "model.py"
    model.write_text(model.read_text(encoding="utf-8") + "\nimport dyn.runtime\n")
    result = _lint_imports(tree)
    assert result.returncode != 0
    assert f"{GRAPH_CONTRACT} BROKEN" in result.stdout
    assert "dyn.graph.model -> dyn.runtime" in result.stdout
