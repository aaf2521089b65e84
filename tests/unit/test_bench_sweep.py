"""`dyn bench --sim --sweep`: parsing the key and values, the table, the SVG plot."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dyn.bench.svg_plot import Panel, nice_axis, tradeoff_svg
from dyn.bench.sweep import (
    BENCH_KEYS,
    Sweep,
    SweepValue,
    option_value,
    resolve_sweep,
    split_sweep,
    sweep_table,
)
from dyn.errors import DynError
from dyn.routing.kv.router import KvRouter

SVG = "{http://www.w3.org/2000/svg}"
KV_OPTIONS = list(KvRouter.OPTIONS)


# -- parsing ------------------------------------------------------------------------------


def test_split_takes_a_key_and_its_values() -> None:
    assert split_sweep("overlap-score-weight=0, 1,2.5") == (
        "overlap_score_weight",
        ["0", "1", "2.5"],
    )
    assert split_sweep("workers=4") == ("workers", ["4"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("workers", "takes KEY=V1,V2"),
        ("=1,2", "takes KEY=V1,V2"),
        ("workers=", "lists no values"),
        ("workers= ", "lists no values"),
        ("workers=1,,2", "an empty value"),
        ("workers=2,2", "each value once"),
    ],
)
def test_split_refuses_malformed_text(text: str, message: str) -> None:
    with pytest.raises(DynError, match=message):
        split_sweep(text)


def test_bench_keys_take_typed_values() -> None:
    sweep = resolve_sweep("workers", ["2", "4"], strategy="kv", option_names=KV_OPTIONS)
    assert sweep.kind == "bench"
    assert [v.value for v in sweep.values] == [2, 4]
    assert [sweep.label(v) for v in sweep.values] == ["workers=2", "workers=4"]
    rate = resolve_sweep("request_rate", ["1.5", "inf"], strategy="kv", option_names=None)
    assert [v.value for v in rate.values] == [1.5, math.inf]
    speed = resolve_sweep("trace_speedup", ["1", "4"], strategy="kv", option_names=None)
    assert [v.value for v in speed.values] == [1.0, 4.0]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("workers", "0"),
        ("workers", "1.5"),
        ("workers", "four"),
        ("trace_speedup", "0"),
        ("trace_speedup", "inf"),
        ("trace_speedup", "nan"),
        ("request_rate", "-1"),
        ("max_concurrency", "-1"),
        ("router_sync_delay_ms", "-0.5"),
    ],
)
def test_bench_keys_refuse_bad_values(key: str, value: str) -> None:
    with pytest.raises(DynError, match=f"--sweep {key}: '{value}' is not valid"):
        resolve_sweep(key, ["1", value], strategy="kv", option_names=None)


def test_every_bench_key_is_a_bench_option() -> None:
    from dataclasses import fields

    from dyn.cli.bench_run import BenchOptions

    names = {f.name for f in fields(BenchOptions)}
    assert set(BENCH_KEYS) <= names


def test_strategy_options_come_from_the_class_not_a_list() -> None:
    sweep = resolve_sweep(
        "overlap_score_weight", ["0", "1.5"], strategy="kv", option_names=KV_OPTIONS
    )
    assert (sweep.kind, sweep.strategy, sweep.option) == ("option", "kv", "overlap_score_weight")
    assert [v.value for v in sweep.values] == [0, 1.5]
    # A strategy written later with its own option is sweepable as it stands.
    other = resolve_sweep("slack", ["0.1", "0.2"], strategy="kv_new", option_names=["slack"])
    assert (other.strategy, other.option) == ("kv_new", "slack")


def test_an_option_of_another_strategy_is_named_with_it() -> None:
    sweep = resolve_sweep("kv_approx.ttl_s", ["1", "5"], strategy="kv", option_names=KV_OPTIONS)
    assert (sweep.kind, sweep.strategy, sweep.option) == ("option", "kv_approx", "ttl_s")


def test_the_strategy_itself_is_a_key() -> None:
    sweep = resolve_sweep("strategy", ["round-robin", "kv"], strategy="kv", option_names=None)
    assert sweep.kind == "strategy"
    assert [v.value for v in sweep.values] == ["round_robin", "kv"]
    assert [v.text for v in sweep.values] == ["round-robin", "kv"]
    with pytest.raises(DynError, match="each strategy once"):
        resolve_sweep("strategy", ["round-robin", "round_robin"], strategy="kv", option_names=None)


def test_an_unknown_key_names_what_is_valid() -> None:
    with pytest.raises(DynError) as caught:
        resolve_sweep("temprature", ["1"], strategy="kv", option_names=KV_OPTIONS)
    message = str(caught.value)
    assert "unknown --sweep key 'temprature'" in message
    for valid in ("strategy", "workers", "trace_speedup", "temperature", "STRATEGY.OPTION"):
        assert valid in message
    with pytest.raises(DynError, match="the round_robin strategy takes none"):
        resolve_sweep("temperature", ["1"], strategy="round_robin", option_names=None)


@pytest.mark.parametrize(
    ("text", "value"),
    [("3", 3), ("-2", -2), ("0.5", 0.5), ("1e3", 1000.0), ("true", True), ("False", False)],
)
def test_option_values_read_as_a_graph_gives_them(text: str, value: Any) -> None:
    parsed = option_value(text)
    assert parsed == value
    assert type(parsed) is type(value)


def test_option_values_that_are_not_numbers_stay_text() -> None:
    assert option_value("fast") == "fast"


# -- the table ------------------------------------------------------------------------------


def _result(reuse: float, ttft: float, failed: int = 0) -> dict[str, Any]:
    result: dict[str, Any] = {
        "prefix_hit_rate": reuse,
        "request_throughput": 12.5,
        "failed": failed,
        "worker_request_share": {"sim-0": 0.75, "sim-1": 0.25},
    }
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "p90"):
            result[f"{stat}_{metric}_ms"] = ttft if metric == "ttft" else 1000.0
    return result


def test_the_table_has_one_row_per_value_in_sweep_order() -> None:
    values = tuple(SweepValue(t, float(t)) for t in ("8", "0", "2"))
    sweep = Sweep("overlap_score_weight", "option", values, "kv", "overlap_score_weight")
    arms = {
        "overlap_score_weight=0": _result(0.25, 80.0),
        "overlap_score_weight=2": _result(0.5, 70.0),
        "overlap_score_weight=8": _result(0.75, 66.0, failed=1),
    }
    lines = sweep_table(sweep, arms, [50, 90], ["ttft", "tpot", "e2el"]).splitlines()
    header = lines[0].split()
    assert header[:3] == ["overlap_score_weight", "reuse", "req/s"]
    assert "p90" in header
    assert header[-2:] == ["busiest", "failed"]
    rows = [line.split() for line in lines[2:]]
    assert [row[0] for row in rows] == ["8", "0", "2"]
    assert [row[1] for row in rows] == ["75.0%", "25.0%", "50.0%"]
    assert [row[-1] for row in rows] == ["1", "0", "0"]
    assert all(row[-2] == "75%" for row in rows)
    assert "1,000.0" in lines[2]


# -- the SVG plot ---------------------------------------------------------------------------


def _floats(element: ET.Element, *names: str) -> list[float]:
    return [float(element.attrib[name]) for name in names]


def test_the_plot_is_valid_svg_with_a_labelled_point_per_arm_in_each_panel() -> None:
    labels = ["0", "1", "2", "4", "8"]
    xs = [28.5, 52.0, 66.1, 74.9, 81.0]
    ttft = [84.0, 72.5, 68.0, 66.2, 66.0]
    e2el = [2012.0, 2050.0, 2110.0, 2246.0, 2390.0]
    document = tradeoff_svg(
        labels,
        xs,
        [Panel("TTFT p50", "ms", ttft), Panel("E2EL p90", "ms", e2el)],
        title="Sweep of overlap_score_weight <kv & co>",
        subtitle="4 workers",
        x_label="prefix reuse (%)",
    )
    root = ET.fromstring(document)  # well-formed, escaped title included
    assert root.tag == f"{SVG}svg"
    panels = root.findall(f"{SVG}g[@class='panel']")
    assert len(panels) == 2
    for panel, ys in zip(panels, (ttft, e2el), strict=True):
        area = panel.find(f"{SVG}rect[@class='plot-area']")
        assert area is not None
        left, top, width, height = _floats(area, "x", "y", "width", "height")
        points = panel.findall(f"{SVG}circle[@class='point']")
        assert len(points) == len(labels)
        centres = [_floats(p, "cx", "cy") for p in points]
        for cx, cy in centres:
            assert left < cx < left + width
            assert top < cy < top + height
        # Larger values sit further right (x) and higher up (smaller y).
        assert [c[0] for c in centres] == sorted(c[0] for c in centres)
        order = sorted(range(len(ys)), key=lambda i: ys[i])
        assert [centres[i][1] for i in order] == sorted((c[1] for c in centres), reverse=True)
        texts = [t.text for t in panel.findall(f"{SVG}text[@class='point-label']")]
        assert texts == labels
    assert "Sweep of overlap_score_weight <kv & co>" in "".join(root.itertext())


def test_the_plot_is_deterministic_and_handles_equal_values() -> None:
    def draw() -> str:
        return tradeoff_svg(
            ["a", "b"], [50.0, 50.0], [Panel("t", "ms", [10.0, 10.0])], title="t", x_label="x"
        )

    assert draw() == draw()
    root = ET.fromstring(draw())
    assert len(root.findall(f".//{SVG}circle")) == 2


def test_the_plot_refuses_mismatched_series() -> None:
    with pytest.raises(ValueError, match="one label, x and y"):
        tradeoff_svg(["a"], [1.0, 2.0], [Panel("t", "ms", [1.0, 2.0])], title="t", x_label="x")


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(st.lists(finite, min_size=1, max_size=12))
def test_an_axis_holds_every_value_at_round_steps(values: list[float]) -> None:
    axis = nice_axis(values)
    assert axis.low < min(values) <= max(values) < axis.high
    ticks = axis.ticks()
    assert 2 <= len(ticks) <= 13
    assert ticks[0] == axis.low
    assert ticks[-1] == pytest.approx(axis.high)
    mantissa = axis.step / 10 ** math.floor(math.log10(axis.step))
    assert any(mantissa == pytest.approx(m) for m in (1, 2, 2.5, 5))
