"""Token-level latency metrics of the OpenAI routes, beside the frontend's request metrics.

Request counts by status, requests in flight and request duration come from
:class:`~dyn.observability.metrics.FrontendMetrics` (labelled by route); this adds what
only a token stream can tell, labelled by route and model. Names follow Dynamo's
``dynamo_frontend_*`` with dyn's prefix.
"""

from __future__ import annotations

from functools import cache

from prometheus_client import CollectorRegistry, Counter, Histogram

from dyn.observability.metrics import LATENCY_BUCKETS, FrontendMetrics

__all__ = ["OpenAIMetrics", "RouteMetrics"]

# Tokens; powers of two from a one-word answer to a long-context prompt.
TOKEN_BUCKETS = tuple(float(2**k) for k in range(0, 18))


class OpenAIMetrics:
    """Pass one per registry; ``frontend`` is the role's own :class:`FrontendMetrics`."""

    def __init__(self, registry: CollectorRegistry, frontend: FrontendMetrics) -> None:
        self.frontend = frontend
        labels = ["route", "model"]
        self.ttft = Histogram(
            "dyn_frontend_time_to_first_token_seconds",
            "Time from receiving a request to its first output.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.itl = Histogram(
            "dyn_frontend_inter_token_latency_seconds",
            "Mean time between output tokens after the first, one sample per request.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.input_tokens = Histogram(
            "dyn_frontend_input_sequence_tokens",
            "Prompt length of each request.",
            labels,
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.output_tokens = Histogram(
            "dyn_frontend_output_sequence_tokens",
            "Generated length of each request.",
            labels,
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.cached_tokens = Counter(
            "dyn_frontend_cached_prompt_tokens",
            "Prompt tokens served from the prefix cache.",
            labels,
            registry=registry,
        )

    @cache  # noqa: B019 - a handful of (route, model) pairs, alive as long as the metrics
    def route(self, route: str, model: str) -> RouteMetrics:
        """The children for one route and model, resolved once rather than per request."""
        return RouteMetrics(self, route, model)


class RouteMetrics:
    """The children of one route and model, and the one update each request makes."""

    def __init__(self, metrics: OpenAIMetrics, route: str, model: str) -> None:
        frontend = metrics.frontend
        self.inflight = frontend.inflight.labels(route)
        self.duration = frontend.duration.labels(route)
        self._requests = frontend.requests
        self._route = route
        # One child per status seen; labels() takes a lock and builds a key every call.
        self._by_status: dict[int, Counter] = {}
        self.ttft = metrics.ttft.labels(route, model)
        self.itl = metrics.itl.labels(route, model)
        self.input_tokens = metrics.input_tokens.labels(route, model)
        self.output_tokens = metrics.output_tokens.labels(route, model)
        self.cached_tokens = metrics.cached_tokens.labels(route, model)

    def finished(self, status: int, seconds: float) -> None:
        requests = self._by_status.get(status)
        if requests is None:
            requests = self._by_status[status] = self._requests.labels(self._route, str(status))
        requests.inc()
        self.duration.observe(seconds)
        self.inflight.dec()

    def tokens(
        self, *, ttft: float, itl: float | None, prompt: int, output: int, cached: int
    ) -> None:
        """A completed generation's token timings and counts (``itl`` is None for one
        output)."""
        self.ttft.observe(ttft)
        if itl is not None:
            self.itl.observe(itl)
        self.input_tokens.observe(prompt)
        self.output_tokens.observe(output)
        if cached:  # adding zero changes nothing a scrape shows
            self.cached_tokens.inc(cached)
