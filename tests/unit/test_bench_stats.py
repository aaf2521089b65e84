"""Percentiles, the result dictionary, and the reports made from it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dyn.bench.report import compare_table, result_table, write_csv, write_json
from dyn.bench.stats import RequestResult, percentile, percentile_key, shares, summarize


def test_percentile_interpolates_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile(values, 100) == 4.0
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) == 0.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # order does not matter


@given(st.lists(st.floats(-1e6, 1e6), min_size=1), st.floats(0, 100))
def test_percentile_stays_within_the_values(values: list[float], p: float) -> None:
    assert min(values) <= percentile(values, p) <= max(values)


def test_percentile_keys() -> None:
    assert percentile_key(99) == "p99"
    assert percentile_key(99.9) == "p99.9"


def test_shares() -> None:
    assert shares({"b": 3, "a": 1}) == {"a": 0.25, "b": 0.75}
    assert shares({"a": 0}) == {}


def _results() -> list[RequestResult]:
    ok = [
        RequestResult(
            0,
            100,
            ok=True,
            status=200,
            ttft_s=0.1,
            e2el_s=0.5,
            itls_s=[0.1] * 4,
            output_len=5,
            cached_tokens=50,
        ),
        RequestResult(1, 100, ok=True, status=200, ttft_s=0.3, e2el_s=0.3, output_len=1),
    ]
    failed = [
        RequestResult(2, 100, status=429, error="HTTP 429: queue full"),
        RequestResult(3, 100, status=200, error="stream error: boom", output_len=2),
        RequestResult(4, 100, status=None, error="ConnectError: refused"),
    ]
    return ok + failed


def test_summarize_counts_and_vllm_keys() -> None:
    result = summarize(_results(), 2.0, [50, 99], extra={"worker_request_share": {"w": 1.0}})
    assert result["completed"] == 2
    assert result["failed"] == 3
    assert result["total_input_tokens"] == 200
    assert result["total_output_tokens"] == 6 == sum(result["output_lens"])
    assert result["request_throughput"] == 1.0
    assert result["output_throughput"] == 3.0
    assert result["prefix_hit_rate"] == 0.25
    assert result["errors_by_status"] == {"429": 1, "connection": 1, "stream": 1}
    assert result["mean_ttft_ms"] == pytest.approx(200)
    assert result["median_ttft_ms"] == pytest.approx(200)
    assert result["std_ttft_ms"] == pytest.approx(100)
    assert result["p99_ttft_ms"] == pytest.approx(298)
    # TPOT only for requests with more than one token: (0.5 - 0.1) / 4.
    assert result["mean_tpot_ms"] == pytest.approx(100)
    assert result["mean_itl_ms"] == pytest.approx(100)
    assert result["mean_e2el_ms"] == pytest.approx(400)
    assert result["worker_request_share"] == {"w": 1.0}
    assert len(result["ttfts"]) == len(result["itls"]) == len(result["errors"]) == 5
    assert result["errors"][0] == ""
    assert result["errors"][2] == "HTTP 429: queue full"
    for key in ("duration", "mean_itl_ms", "median_e2el_ms", "p50_tpot_ms", "std_e2el_ms"):
        assert key in result


def test_summarize_nothing_succeeded() -> None:
    result = summarize([RequestResult(0, 10, error="x")], 1.0)
    assert result["completed"] == 0
    assert result["mean_ttft_ms"] == 0.0
    assert result["prefix_hit_rate"] == 0.0


def test_result_table_uses_vllm_names() -> None:
    result = summarize(_results(), 2.0, [50, 90, 99], extra={"worker_request_share": {"abc": 1.0}})
    table = result_table(result, [50, 90, 99])
    for name in (
        "Successful requests:",
        "Benchmark duration (s):",
        "Total input tokens:",
        "Total generated tokens:",
        "Request throughput (req/s):",
        "Output token throughput (tok/s):",
        "Mean TTFT (ms):",
        "Median TTFT (ms):",
        "P90 TTFT (ms):",
        "P99 TTFT (ms):",
        "Mean TPOT (ms):",
        "P99 ITL (ms):",
        "Median E2EL (ms):",
        "Prefix cache hit rate:",
        "abc 100%",
    ):
        assert name in table
    assert "P50 TTFT" not in table  # the median says it already
    assert "429: 1" in table


def test_compare_table_shows_ratios_to_the_first_arm() -> None:
    first = summarize(_results(), 2.0)
    second = summarize(_results(), 1.0)
    table = compare_table({"round_robin": first, "kv": second})
    header = table.splitlines()[0]
    assert header.index("round_robin") < header.index("kv")
    assert "(×2.00)" in next(line for line in table.splitlines() if "Request throughput" in line)


def test_write_json_and_csv(tmp_path: Path) -> None:
    result = summarize(_results(), 2.0)
    write_json(tmp_path / "r.json", result)
    assert json.loads((tmp_path / "r.json").read_text())["completed"] == 2
    write_csv(tmp_path / "r.csv", {"a": result, "b": result})
    with (tmp_path / "r.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10
    assert rows[0]["arm"] == "a"
    assert float(rows[0]["tpot_ms"]) == pytest.approx(100)
    assert rows[2]["error"] == "HTTP 429: queue full"
