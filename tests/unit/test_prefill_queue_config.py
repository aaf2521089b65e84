"""The prefill queue's backend keys in a graph file: checked by `dyn graph validate` with
the file and line of the offending key, like every other key."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from dyn.cli.graph_cmd import app

DISAGG = Path(__file__).resolve().parents[2] / "graphs" / "disagg.yaml"
QUEUE_CONFIG = "      max_size: 64\n"

runner = CliRunner()


def graph_with(tmp_path: Path, queue_keys: str) -> tuple[Path, int]:
    """disagg.yaml with ``queue_keys`` added to the prefill queue's config; the line of
    that config's first key."""
    text = DISAGG.read_text()
    assert QUEUE_CONFIG in text
    path = tmp_path / "disagg.yaml"
    path.write_text(text.replace(QUEUE_CONFIG, QUEUE_CONFIG + queue_keys))
    line = text[: text.index(QUEUE_CONFIG)].count("\n") + 1
    return path, line


def test_jetstream_with_servers_validates(tmp_path: Path) -> None:
    path, _ = graph_with(
        tmp_path,
        "      backend: jetstream\n      options: {servers: [nats://127.0.0.1:4222]}\n",
    )
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output


def test_jetstream_without_options_validates_it_uses_the_nats_transport(tmp_path: Path) -> None:
    # Without options, backend jetstream means the server of the graph's nats transport
    # (a graph's file may say tcp and be run with --transport nats); a role whose
    # transport is not nats refuses to start (tests/e2e/test_graphs_over_nats.py).
    path, _ = graph_with(tmp_path, "      backend: jetstream\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output


def test_a_server_that_is_no_nats_url_is_refused_with_its_line(tmp_path: Path) -> None:
    path, line = graph_with(
        tmp_path, "      backend: jetstream\n      options:\n        servers: [127.0.0.1:4222]\n"
    )
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert (
        f"{path}:{line + 2}: components.prefill_queue.config.options: server '127.0.0.1:4222' "
        "is not a NATS URL; write it as nats://HOST:PORT"
    ) in result.stderr


def test_options_without_jetstream_are_refused(tmp_path: Path) -> None:
    path, _ = graph_with(tmp_path, "      options: {servers: [nats://127.0.0.1:4222]}\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "options are for backend jetstream" in result.stderr
