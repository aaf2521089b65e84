"""A graph's ``max_model_len`` must fit its engines, and a client's ``max_tokens`` is
never cut short: it fits the context or the request is refused, quoting it as sent."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anyio
import msgspec
import pytest
from _dyn_graph import DYN, free_port
from typer.testing import CliRunner

from dyn.cli.app import app
from dyn.contracts.processor import PROCESSOR_GENERATE, GenerateOutput, GenerateRequest
from dyn.errors import BadRequestError
from dyn.graph import load_graph, load_graph_text
from dyn.launch.base import LaunchObserver
from dyn.launch.inprocess import InProcessLauncher
from dyn.launch.role_classes import role_class
from dyn.runtime.client import Client

GRAPHS = Path(__file__).resolve().parents[2] / "graphs"
runner = CliRunner()


def _too_long_kv_routing(tmp_path: Path) -> tuple[Path, int]:
    """graphs/kv_routing.yaml advertising 16384 tokens; the line of that field."""
    text = (GRAPHS / "kv_routing.yaml").read_text()
    lines = text.splitlines()
    (line,) = [i + 1 for i, row in enumerate(lines) if row.strip().startswith("max_model_len:")]
    lines[line - 1] = "  max_model_len: 16384"
    path = tmp_path / "kv_routing.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path, line


def _check_problem(problem: str, path: Path, line: int) -> None:
    assert problem.startswith(f"{path}:{line}: model.max_model_len: max_model_len 16384 ")
    # Both numbers, and where the smaller one comes from.
    assert "component 'worker'" in problem
    assert "num_gpu_blocks 512 × block_size 16" in problem
    assert "8096 tokens" in problem


def test_a_context_beyond_the_workers_cache_is_a_validate_error(tmp_path: Path) -> None:
    path, line = _too_long_kv_routing(tmp_path)
    result = runner.invoke(app, ["graph", "validate", str(path)])
    assert result.exit_code == 2
    (problem,) = result.stderr.splitlines()
    _check_problem(problem, path, line)
    assert "Traceback" not in result.output


def test_a_context_beyond_the_workers_cache_stops_dyn_up(tmp_path: Path) -> None:
    # A process of its own, bounded: a graph that passes would start serving.
    path, line = _too_long_kv_routing(tmp_path)
    args = [*DYN, "up", str(path), "--layout", "one-process", "--port", str(free_port())]
    env = {**os.environ, "DYN_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2, done.stderr
    (problem,) = done.stderr.splitlines()
    _check_problem(problem, path, line)


def test_the_default_context_is_checked_too() -> None:
    graph = """
    name: small
    model: {name: m}
    components:
      worker:
        uses: worker
        config: {block_size: 16, num_gpu_blocks: 100}
    """
    with pytest.raises(Exception, match=r"max_model_len 8192 \(the default\)") as info:
        load_graph_text(graph.replace("\n    ", "\n"), "g.yaml", resolve_role=role_class)
    assert "g.yaml:3: model: " in str(info.value)
    assert "1584 tokens" in str(info.value)  # int(0.99 × 100) blocks of 16


@pytest.mark.parametrize("name", sorted(p.name for p in GRAPHS.glob("*.yaml")))
def test_every_shipped_graph_is_valid(name: str) -> None:
    load_graph(GRAPHS / name, resolve_role=role_class)


def test_a_proxy_graph_keeps_its_context() -> None:
    # An upstream server keeps its own limit: dyn has no engine cache to compare with.
    spec = load_graph(GRAPHS / "proxy.yaml", resolve_role=role_class)
    assert spec.model is not None
    assert spec.model.max_model_len == 16384


PROCESSOR_GRAPH = """
name: capped
model: {name: m, max_model_len: 64}
components:
  processor:
    uses: processor
    depends_on: [worker]
    config: {strategy: round_robin}
  worker:
    uses: worker
    config:
      block_size: 16
      num_gpu_blocks: 64
      timing: {fixed: {prefill_ms: 0, decode_ms: 0}}
"""


async def _generate(client: Client, request: GenerateRequest) -> list[GenerateOutput]:
    outputs: list[GenerateOutput] = []
    async with client.stream(PROCESSOR_GENERATE, request) as items:
        async for item in items:
            outputs.append(item)
    return outputs


@pytest.mark.anyio
async def test_the_processor_refuses_a_clients_max_tokens_as_sent() -> None:
    graph = load_graph_text(PROCESSOR_GRAPH, resolve_role=role_class)
    launcher, stop, ready = InProcessLauncher(), anyio.Event(), anyio.Event()

    class Observer(LaunchObserver):
        def graph_ready(self, url: str | None, seconds: float) -> None:
            ready.set()

    prompt = " ".join(["word"] * 10)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(launcher.run, graph, Observer(), stop)
        with anyio.fail_after(20):
            await ready.wait()
            runtime = launcher.runtime
            assert runtime is not None
            client = runtime.client("processor")
            await client.wait_for_instances("generate")
            # Converted rather than constructed: a field the struct lacks is then ignored,
            # and what is checked is what the processor does.
            fields = {
                "request_id": "r1",
                "prompt": prompt,
                "max_tokens": 60,
                "max_tokens_param": "max_completion_tokens",
            }
            sent = msgspec.convert(fields, GenerateRequest)
            with pytest.raises(BadRequestError) as info:
                await _generate(client, sent)
            # A default (no cap of the client's) runs to the end of the context instead.
            default = GenerateRequest(request_id="r2", prompt=prompt, max_tokens=64)
            outputs = await _generate(client, default)
        stop.set()
    prompt_tokens = outputs[0].prompt_tokens
    assert prompt_tokens is not None
    assert info.value.message == (
        f"this model's maximum context length is 64 tokens, but {prompt_tokens} prompt tokens + "
        "max_completion_tokens 60 asks for more; lower max_completion_tokens or shorten "
        "the prompt"
    )
    assert sum(o.token_count for o in outputs) == 64 - prompt_tokens
