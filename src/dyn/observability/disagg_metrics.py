"""Metrics of disaggregated serving: where prefills ran, the queue, the KV transfers.

Registered once per registry (several roles share one in one-process mode), so that the
frontend's ``/metrics`` shows them all when the whole graph runs in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dyn.observability.metrics import LATENCY_BUCKETS
from dyn.observability.worker_metrics import MetricSet

__all__ = ["DisaggMetrics", "PrefillQueueMetrics"]


class DisaggMetrics(MetricSet):
    """Kept by decode workers (prefills, waits) and prefill workers (transfers)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.prefills = Counter(
            "dyn_prefills",
            "Prefills by where they ran: remote (a prefill worker) or local.",
            ["location"],
            registry=registry,
        )
        self.rejected = Counter(
            "dyn_prefill_rejected",
            "Requests refused because the prefill queue was full (on_full_queue: reject).",
            registry=registry,
        )
        self.remote_fallbacks = Counter(
            "dyn_remote_prefill_fallbacks",
            "Remote prefills abandoned for a local one, by reason.",
            ["reason"],
            registry=registry,
        )
        self.kv_transfer = Histogram(
            "dyn_kv_transfer_seconds",
            "Time to move a prefill's KV blocks to its decode worker.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.prefill_wait = Histogram(
            "dyn_prefill_wait_seconds",
            "Time a decode worker waited for a remote prefill, from enqueue to its KV.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


class PrefillQueueMetrics(MetricSet):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.depth = Gauge(
            "dyn_prefill_queue_depth", "Prefill jobs not yet acked.", registry=registry
        )
        self.redelivered = Counter(
            "dyn_prefill_queue_redelivered",
            "Jobs handed out again after their lease expired.",
            registry=registry,
        )
