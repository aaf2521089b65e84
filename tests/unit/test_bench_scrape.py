"""Prometheus text parsing and the deltas a benchmark reports."""

from __future__ import annotations

from dyn.bench.scrape import by_label, delta, parse_metrics, server_delta, total

BEFORE = """\
# HELP dyn_router_decisions_total Requests routed.
# TYPE dyn_router_decisions_total counter
dyn_router_decisions_total{worker="a"} 3.0
dyn_router_decisions_total{worker="b"} 1.0
dyn_prompt_tokens_total{worker="a"} 100.0
dyn_frontend_requests_total{route="/v1/completions",status="200"} 4.0
"""

AFTER = """\
dyn_router_decisions_total{worker="a"} 5.0
dyn_router_decisions_total{worker="b"} 4.0
dyn_router_decisions_total{worker="c"} 2.0
dyn_prompt_tokens_total{worker="a"} 250.0
dyn_frontend_requests_total{status="200",route="/v1/completions"} 11.0
dyn_worker_kv_active_blocks{worker="a"} 7
process_start_time_seconds 1.7e+09
"""


def test_parse_labels_values_and_comments() -> None:
    samples = parse_metrics(AFTER)
    assert samples[("dyn_router_decisions_total", (("worker", "c"),))] == 2.0
    # Label order in the text does not matter.
    key = ("dyn_frontend_requests_total", (("route", "/v1/completions"), ("status", "200")))
    assert samples[key] == 11.0
    assert samples[("process_start_time_seconds", ())] == 1.7e9
    assert len(parse_metrics(BEFORE)) == 4


def test_parse_escapes_timestamps_and_junk() -> None:
    text = (
        'm{path="a\\"b\\\\c",x="1"} 2 1700000000000\n'
        "m_inf +Inf\n"
        "not a metric line at all\n"
        'bad_value{a="b"} pony\n'
    )
    samples = parse_metrics(text)
    assert samples[("m", (("path", 'a"b\\c'), ("x", "1")))] == 2.0
    assert samples[("m_inf", ())] == float("inf")
    assert len(samples) == 2


def test_delta_by_worker_and_totals() -> None:
    changes = delta(parse_metrics(BEFORE), parse_metrics(AFTER))
    assert by_label(changes, "dyn_router_decisions_total", "worker") == {
        "a": 2.0,
        "b": 3.0,
        "c": 2.0,
    }
    assert total(changes, "dyn_prompt_tokens_total") == 150.0
    summary = server_delta(changes)
    assert summary["dyn_frontend_requests_total"] == 7.0
    assert summary["dyn_router_decisions_total"] == 7.0
    assert "dyn_cached_prompt_tokens_total" not in summary  # not exposed: not reported


def test_delta_treats_a_reset_as_a_restart() -> None:
    before = parse_metrics("c_total 10\n")
    assert delta(before, parse_metrics("c_total 3\n")) == {("c_total", ()): 3.0}
    assert delta({}, {}) == {}
