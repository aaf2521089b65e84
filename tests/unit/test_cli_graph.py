"""``dyn graph validate`` and ``dyn graph show`` through typer's CliRunner."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dyn.cli.graph_cmd import app

HELLO = Path(__file__).resolve().parents[2] / "graphs" / "hello_world.yaml"

runner = CliRunner()


def test_validate_ok() -> None:
    result = runner.invoke(app, ["validate", str(HELLO)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"ok {HELLO}: graph 'hello_world', 3 components, 3 instances\n"


def test_validate_with_override_counts_instances() -> None:
    result = runner.invoke(app, ["validate", str(HELLO), "--set", "middle.replicas=4"])
    assert result.exit_code == 0, result.output
    assert "3 components, 6 instances" in result.stdout


def test_validate_error_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(HELLO.read_text().replace("transport: inproc", "transport: tcpp"))
    result = runner.invoke(app, ["validate", str(bad), "--set", "middle.replicas=0"])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("--set middle.replicas=0: components.middle.replicas: must be")
    assert lines[1].startswith(
        f"{bad}:6: transport: unknown transport 'tcpp' (did you mean 'tcp'?); available: grpc, inproc, nats, tcp"
    )
    assert len(lines) == 2
    assert "Traceback" not in result.output


def test_validate_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2
    assert result.stderr == f"{tmp_path / 'none.yaml'}: no such file\n"


def test_show_draws_the_graph() -> None:
    result = runner.invoke(app, ["show", str(HELLO), "--set", "backend.delay_s=0.5"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("hello_world", "frontend", "middle", "backend", "dyn.roles.hello:Middle"):
        assert text in out
    assert "listen http://127.0.0.1:8000" in out
    assert "/generate → middle/generate" in out
    assert "→ backend" in out
    assert "delay_s = 0.5" in out


def test_show_error_exits_2() -> None:
    result = runner.invoke(app, ["show", str(HELLO), "--set", "nope.replicas=1"])
    assert result.exit_code == 2
    assert "unknown component 'nope'" in result.stderr


@pytest.mark.parametrize("command", ["validate", "show"])
def test_command_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "--set" in result.stdout
    assert "COMPONENT.KEY=VALUE" in result.stdout


def test_no_arguments_shows_help() -> None:
    result = runner.invoke(app, [])
    assert "validate" in result.output
    assert "show" in result.output
