"""Metrics of the LLM roles: workers (per instance) and the processor's routing.

Several replicas can share one registry (one-process mode), so each metric set is
registered once per registry and labelled by worker instance.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Self
from weakref import WeakKeyDictionary

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dyn.observability.metrics import LATENCY_BUCKETS

__all__ = ["MetricSet", "RouterMetrics", "WorkerMetrics"]


class MetricSet(ABC):
    """A set of metrics registered at most once per registry: subclass it, create the
    metrics in ``__init__``, and get the one instance of a registry with :meth:`of`."""

    _made: ClassVar[WeakKeyDictionary[CollectorRegistry, MetricSet]]

    def __init_subclass__(cls) -> None:
        cls._made = WeakKeyDictionary()

    @classmethod
    def of(cls, registry: CollectorRegistry) -> Self:
        made = cls._made.get(registry)
        if made is None:
            made = cls._made[registry] = cls(registry)
        assert isinstance(made, cls)
        return made

    @abstractmethod
    def __init__(self, registry: CollectorRegistry) -> None:
        """Register the metrics in ``registry``; call :meth:`of` instead."""


class WorkerMetrics(MetricSet):
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["worker"]
        self.prompt_tokens = Counter(
            "dyn_prompt_tokens", "Prompt tokens received.", labels, registry=registry
        )
        self.cached_prompt_tokens = Counter(
            "dyn_cached_prompt_tokens",
            "Prompt tokens served from the prefix cache.",
            labels,
            registry=registry,
        )
        self.kv_active_blocks = Gauge(
            "dyn_worker_kv_active_blocks", "KV blocks in use.", labels, registry=registry
        )
        self.kv_total_blocks = Gauge(
            "dyn_worker_kv_total_blocks", "KV blocks in all.", labels, registry=registry
        )
        self.inflight = Gauge(
            "dyn_worker_inflight_requests", "Requests being served.", labels, registry=registry
        )
        self.requests = Counter(
            "dyn_worker_requests",
            "Requests finished, by status.",
            [*labels, "status"],
            registry=registry,
        )
        self.ttft = Histogram(
            "dyn_worker_time_to_first_token_seconds",
            "Time from receiving a request to its first token.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.itl = Histogram(
            "dyn_worker_inter_token_latency_seconds",
            "Time between consecutive tokens of a request.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "dyn_worker_request_duration_seconds",
            "Time from receiving a request to its last token.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


class RouterMetrics(MetricSet):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "dyn_router_decisions",
            "Requests routed, by chosen worker instance.",
            ["worker"],
            registry=registry,
        )
        self.migrations = Counter(
            "dyn_migrations",
            "Requests resent to another worker after their stream broke mid-way.",
            registry=registry,
        )

    def decision(self, worker: str) -> None:
        self.decisions.labels(worker).inc()
