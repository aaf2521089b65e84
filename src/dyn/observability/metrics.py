"""Metric names and their registration, one place per role.

Base units, ``_seconds`` histograms, ``_total`` counters, all prefixed ``dyn_``. Each
runtime has its own registry, so several graphs in one process (tests) never collide;
in one-process mode every role shares the runtime's registry and the frontend's
``/metrics`` shows them all.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

__all__ = ["LATENCY_BUCKETS", "FrontendMetrics"]

# The `_created` timestamp series double every counter's output and nobody reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Seconds; spans sub-millisecond in-process hops up to minute-long generations.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip


class FrontendMetrics:
    """What the HTTP frontend records per request."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "dyn_frontend_requests",
            "HTTP requests finished, by route and status code.",
            ["route", "status"],
            registry=registry,
        )
        self.inflight = Gauge(
            "dyn_frontend_inflight_requests",
            "HTTP requests being served now.",
            ["route"],
            registry=registry,
        )
        self.duration = Histogram(
            "dyn_frontend_request_duration_seconds",
            "Time from receiving a request to sending its last byte.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
