"""`dyn bench` against graphs/kv_routing.yaml started by `dyn up` as a real process.

The workers run with zero-time prefill and decode, so the figures measure only dyn's
own overhead; the tests check that the result file's counts add up, not any time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _dyn_graph import dyn_up, free_port
from typer.testing import CliRunner

from dyn.cli.app import app

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
GRAPH = ROOT / "graphs" / "kv_routing.yaml"
PROMPTS = 16  # 4 groups x 4 prompts
WORKLOAD = [
    "--workload", "shared-prefix", "--groups", "4", "--prompts-per-group", "4",
    "--system-prompt-len", "64", "--question-len", "16", "--output-len", "8",
    "--max-concurrency", "4", "--warmup", "2",
]  # fmt: skip
VLLM_KEYS = [
    "duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
    "request_throughput", "output_throughput",
    *[f"{s}_{m}_ms" for s in ("mean", "median", "std", "p50", "p90", "p99")
      for m in ("ttft", "tpot", "itl", "e2el")],
]  # fmt: skip
DYN_KEYS = ["prefix_hit_rate", "worker_request_share", "errors_by_status", "server_metrics_delta"]
ARRAYS = ["ttfts", "itls", "e2els", "input_lens", "output_lens", "cached_tokens", "errors"]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("bench_live") / "up.log"
    with dyn_up(GRAPH, port, log_path, "worker.timing={fixed: {prefill_ms: 0, decode_ms: 0}}"):
        yield f"http://127.0.0.1:{port}"


def bench(base_url: str, out: Path, *extra: str) -> Any:
    args = ["bench", "--url", base_url, *WORKLOAD, "--save-result", str(out), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output, json.loads(out.read_text())


def check_counts(result: dict[str, Any]) -> None:
    for key in VLLM_KEYS + DYN_KEYS + ARRAYS:
        assert key in result, key
    assert result["completed"] + result["failed"] == PROMPTS
    assert result["failed"] == 0, result["errors_by_status"]
    for key in ARRAYS:
        assert len(result[key]) == PROMPTS, key
    assert sum(result["output_lens"]) == result["total_output_tokens"] == PROMPTS * 8
    assert sum(result["input_lens"]) == result["total_input_tokens"] == PROMPTS * 80
    assert sum(result["worker_request_share"].values()) == pytest.approx(1.0)
    # Scraped after the warm-up: the server saw exactly the measured requests.
    delta = result["server_metrics_delta"]
    assert delta["dyn_router_decisions_total"] == PROMPTS
    assert delta["dyn_prompt_tokens_total"] == result["total_input_tokens"]
    assert delta["dyn_cached_prompt_tokens_total"] == sum(result["cached_tokens"])
    assert 0 <= result["prefix_hit_rate"] <= 1


def test_bench_one_run(base_url: str, tmp_path: Path) -> None:
    output, result = bench(base_url, tmp_path / "r.json", "--csv", str(tmp_path / "r.csv"))
    assert "Successful requests:" in output
    assert "P99 TTFT (ms):" in output
    check_counts(result)
    assert result["strategy"] == "kv"
    assert result["model_id"] == "dyn-mock"
    assert len((tmp_path / "r.csv").read_text().splitlines()) == PROMPTS + 1


def test_bench_compare_round_robin_and_kv(base_url: str, tmp_path: Path) -> None:
    output, arms = bench(base_url, tmp_path / "r.json", "--compare", "round_robin,kv")
    assert list(arms) == ["round_robin", "kv"]
    for name, result in arms.items():
        assert result["strategy"] == name
        check_counts(result)
    assert "(×" in output  # the side-by-side table's ratios
    # The original strategy is back.
    assert httpx.get(f"{base_url}/admin/route").json()["strategy"] == "kv"


def test_admin_kv_clear(base_url: str) -> None:
    reply = httpx.post(f"{base_url}/admin/kv/clear")
    assert reply.status_code == 200
    assert reply.json()["workers"] == 4
    assert reply.json()["cleared_blocks"] >= 0
