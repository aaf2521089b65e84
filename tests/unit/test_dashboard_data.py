"""The dashboard's figures from scraped metrics: percentiles, rates, hit rates."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dyn.bench.scrape import parse_metrics
from dyn.observability.dashboard_data import (
    Snapshot,
    histogram_quantile,
    snapshot,
    window,
    worker_hit_rates,
)
from dyn.observability.metrics import LATENCY_BUCKETS


def test_quantile_interpolates_inside_the_bucket_as_prometheus_does() -> None:
    buckets = {0.1: 0.0, 0.2: 10.0, 0.4: 20.0, math.inf: 20.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.2)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.3)
    # Beyond the last finite bound: that bound, as histogram_quantile answers.
    assert histogram_quantile(0.99, {0.1: 1.0, math.inf: 10.0}) == pytest.approx(0.1)
    assert histogram_quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    assert histogram_quantile(0.5, {}) is None


class Graph:
    """A registry with the metrics the dashboard reads, fed like the roles feed them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("dyn_frontend_requests", "", ["route", "status"], registry=r)
        self.ttft = Histogram(
            "dyn_frontend_time_to_first_token_seconds",
            "",
            ["route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt = Counter("dyn_prompt_tokens", "", ["worker"], registry=r)
        self.cached = Counter("dyn_cached_prompt_tokens", "", ["worker"], registry=r)
        self.routed = Counter("dyn_router_decisions", "", ["worker"], registry=r)
        self.prefills = Counter("dyn_prefills", "", ["location"], registry=r)
        self.depth = Gauge("dyn_prefill_queue_depth", "", registry=r)

    def snap(self, at: float) -> Snapshot:
        return snapshot(parse_metrics(generate_latest(self.registry).decode()), at)


def test_window_rates_and_percentiles_come_from_the_increase() -> None:
    graph = Graph()
    # Before the window: slow requests, which the window's percentiles must not see.
    for _ in range(50):
        graph.requests.labels("/v1/completions", "200").inc()
        graph.ttft.labels("/v1/completions", "m").observe(20.0)
    first = graph.snap(100.0)
    for i in range(40):
        graph.requests.labels("/v1/completions", "200").inc()
        graph.ttft.labels("/v1/completions", "m").observe(0.004 if i % 2 else 0.04)
        graph.routed.labels("w0" if i < 30 else "w1").inc()
    graph.prompt.labels("w0").inc(300)
    graph.cached.labels("w0").inc(75)
    graph.prefills.labels("remote").inc(8)
    graph.prefills.labels("local").inc(2)
    graph.depth.set(3)
    second = graph.snap(104.0)  # newer, within the window: not what rates compare with
    third = graph.snap(105.0)
    figures = window([first, second, third], span_s=5.0)
    assert figures["window_s"] == pytest.approx(5.0)
    assert figures["requests_per_s"] == pytest.approx(40 / 5)
    assert figures["requests_total"] == 90
    ttft = figures["ttft_s"]
    assert 0.0025 <= ttft["p50"] <= 0.005  # half of the window's requests took 4 ms
    assert 0.025 <= ttft["p90"] <= 0.05  # the others 40 ms; none of the 20 s ones
    assert ttft["p99"] <= 0.05
    assert figures["prefix_hit_rate"] == pytest.approx(0.25)
    assert figures["prefills_per_s"] == {"remote": pytest.approx(1.6), "local": pytest.approx(0.4)}
    assert figures["routed_per_s"] == {"w0": pytest.approx(6.0), "w1": pytest.approx(2.0)}
    assert figures["queue_depth"] == 3
    assert worker_hit_rates([first, third]) == {"w0": pytest.approx(0.25)}


def test_one_snapshot_has_no_rates_yet_and_no_queue_without_one() -> None:
    graph = Graph()
    graph.requests.labels("/v1/completions", "200").inc()
    alone = snapshot(parse_metrics('dyn_frontend_requests_total{route="/",status="200"} 3\n'), 1)
    assert alone.queue_depth is None
    figures = window([graph.snap(1.0)])
    assert figures["requests_per_s"] is None
    assert figures["ttft_s"] == {"p50": None, "p90": None, "p99": None}


def test_a_counter_that_went_down_counts_from_zero() -> None:
    """A role process restarted: its counters start over, rates stay non-negative."""
    before = snapshot(parse_metrics('dyn_frontend_requests_total{route="/"} 100\n'), 0.0)
    after = snapshot(parse_metrics('dyn_frontend_requests_total{route="/"} 10\n'), 5.0)
    assert window([before, after])["requests_per_s"] == pytest.approx(2.0)


def test_pages_summed_add_up_processes() -> None:
    """Two frontend processes' pages: the snapshot is their sum."""
    page = 'dyn_frontend_requests_total{route="/v1/completions",status="200"} 4\n'
    samples = parse_metrics(page)
    for key, value in parse_metrics(page).items():
        samples[key] = samples.get(key, 0.0) + value
    assert snapshot(samples, 0.0).requests == 8
