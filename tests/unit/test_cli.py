"""The `dyn` command through typer's CliRunner: help, version, and `dyn up`'s errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dyn import __version__
from dyn.cli.app import app

HELLO = Path(__file__).resolve().parents[2] / "graphs" / "hello_world.yaml"

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "Run and study distributed LLM-serving pipelines."),
        (["--help"], "Run and study distributed LLM-serving pipelines."),
        (["up", "--help"], "--set"),
        (["graph", "--help"], "validate"),
        (["graph", "validate", "--help"], "The graph YAML file"),
        (["graph", "show", "--help"], "The graph YAML file"),
        (["route", "--help"], "--explain"),
        (["bench", "--help"], "transport"),
        (["bench", "transport", "--help"], "raw-socket baseline"),
        (["bench", "router", "--help"], "find_matches"),
    ],
)
def test_help(args: list[str], expected: str) -> None:
    result = runner.invoke(app, args)
    # A bare `dyn` shows the help as a usage error would (exit 2), like git or docker.
    assert result.exit_code == (2 if not args else 0), result.output
    assert expected in result.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"dyn {__version__}\n"


def test_graph_commands_are_mounted() -> None:
    result = runner.invoke(app, ["graph", "validate", str(HELLO)])
    assert result.exit_code == 0, result.output
    assert "graph 'hello_world', 3 components, 3 instances" in result.stdout


def test_up_missing_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["up", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert result.stderr == f"{tmp_path / 'nope.yaml'}: no such file\n"


def test_up_bad_override_names_it(tmp_path: Path) -> None:
    result = runner.invoke(app, ["up", str(HELLO), "--set", "middle.replicas=0"])
    assert result.exit_code == 2
    assert result.stderr.startswith("--set middle.replicas=0: components.middle.replicas:")
    assert "Traceback" not in result.output


def test_up_bad_port_is_a_spec_error() -> None:
    result = runner.invoke(app, ["up", str(HELLO), "--port", "70000"])
    assert result.exit_code == 2
    assert "Invalid value for '--port'" in result.stderr
    assert "65535" in result.stderr


def test_up_port_in_use_is_one_clear_line() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["up", str(HELLO), "--port", str(port)])
    assert result.exit_code == 1
    assert f"error: frontend 'frontend' cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "--port" in result.stderr
    assert "Traceback" not in result.output


def test_up_without_frontend_rejects_port(tmp_path: Path) -> None:
    graph = tmp_path / "g.yaml"
    graph.write_text("name: g\ncomponents:\n  b: {uses: dyn.roles.hello:Backend}\n")
    result = runner.invoke(app, ["up", str(graph), "--port", "9000"])
    assert result.exit_code == 2
    assert "--port needs a graph with a frontend component" in result.stderr


def test_bench_transport_prints_ratios_against_the_raw_baseline() -> None:
    args = ["bench", "transport", "--transports", "tcp", "--concurrency", "1", "--seconds", "0.2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith(("│ raw", "│ tcp"))]
    assert len(rows) == 2
    assert "%" in rows[1]
    assert "%" not in rows[0]


def test_bench_transport_measures_nats_through_a_server_it_starts() -> None:
    args = ["bench", "transport", "--transports", "nats", "--concurrency", "1", "--seconds", "0.2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "nats: through a nats-server started for the bench at nats://127.0.0.1:" in result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("│ nats")]
    assert len(rows) == 1
    assert "%" in rows[0]


def test_bench_transport_rejects_unknown_transports() -> None:
    result = runner.invoke(app, ["bench", "transport", "--transports", "udp"])
    assert result.exit_code == 1
    assert "unknown transport 'udp'; available: grpc, inproc, nats, tcp" in result.stderr
