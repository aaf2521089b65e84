"""What the dashboard shows, computed from scraped metrics: pure functions, no I/O.

The frontend scrapes every role's ``/metrics`` page (or reads its own registry in
one-process mode), sums the pages into one set of samples and keeps a short history of
those :class:`Snapshot` s. The figures over time are differences between the newest
snapshot and one about :data:`WINDOW_S` older: requests per second, latency percentiles
from the histogram buckets' increase (as Prometheus' ``histogram_quantile`` of an
``increase``), the share of prompt tokens served from the prefix cache, remote and
local prefills per second. Gauges (queue depth, KV blocks in use) are read as they are.
Keeping the history on the server, not in the browser, means any number of pages (and
any of several frontend processes behind one port) show the same figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

__all__ = [
    "PERCENTILES",
    "WINDOW_S",
    "Snapshot",
    "histogram_quantile",
    "snapshot",
    "window",
    "worker_hit_rates",
]

# (metric name, sorted (label, value) pairs) -> value, as ``dyn.bench.scrape`` parses.
Samples: TypeAlias = Mapping[tuple[str, tuple[tuple[str, str], ...]], float]
# Upper bound -> cumulative count, +Inf included.
Buckets: TypeAlias = dict[float, float]

# How far back the rates and percentiles look: short enough to follow a change of load
# within seconds, long enough for a few requests per point at low rates.
WINDOW_S = 5.0
PERCENTILES = (0.5, 0.9, 0.99)

_TTFT = "dyn_frontend_time_to_first_token_seconds_bucket"
_ITL = "dyn_frontend_inter_token_latency_seconds_bucket"


@dataclass(frozen=True)
class Snapshot:
    """The cumulative counters and current gauges of the whole graph at ``time``."""

    time: float
    requests: float
    ttft: Buckets
    itl: Buckets
    prompt_tokens: float
    cached_tokens: float
    queue_depth: float | None  # None: no prefill queue in the graph
    prefills: dict[str, float]  # location (remote, local) -> count
    routed: dict[str, float]  # worker instance -> requests routed there
    worker_prompt: dict[str, float] = field(default_factory=dict)
    worker_cached: dict[str, float] = field(default_factory=dict)
    worker_inflight: dict[str, float] = field(default_factory=dict)
    worker_kv_active: dict[str, float] = field(default_factory=dict)
    worker_kv_total: dict[str, float] = field(default_factory=dict)


def _sum(samples: Samples, name: str) -> float:
    return sum(value for (metric, _), value in samples.items() if metric == name)


def _by(samples: Samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (metric, labels), value in samples.items():
        if metric == name:
            key = dict(labels).get(label)
            if key is not None:
                out[key] = out.get(key, 0.0) + value
    return out


def _buckets(samples: Samples, name: str) -> Buckets:
    out: Buckets = {}
    for bound, value in _by(samples, name, "le").items():
        out[float(bound)] = value  # float() reads "+Inf" as inf
    return out


def snapshot(samples: Samples, time: float) -> Snapshot:
    """The graph's figures at ``time`` from every page's samples, summed."""
    present = {metric for metric, _ in samples}
    return Snapshot(
        time=time,
        requests=_sum(samples, "dyn_frontend_requests_total"),
        ttft=_buckets(samples, _TTFT),
        itl=_buckets(samples, _ITL),
        prompt_tokens=_sum(samples, "dyn_prompt_tokens_total"),
        cached_tokens=_sum(samples, "dyn_cached_prompt_tokens_total"),
        queue_depth=(
            _sum(samples, "dyn_prefill_queue_depth")
            if "dyn_prefill_queue_depth" in present
            else None
        ),
        prefills=_by(samples, "dyn_prefills_total", "location"),
        routed=_by(samples, "dyn_router_decisions_total", "worker"),
        worker_prompt=_by(samples, "dyn_prompt_tokens_total", "worker"),
        worker_cached=_by(samples, "dyn_cached_prompt_tokens_total", "worker"),
        worker_inflight=_by(samples, "dyn_worker_inflight_requests", "worker"),
        worker_kv_active=_by(samples, "dyn_worker_kv_active_blocks", "worker"),
        worker_kv_total=_by(samples, "dyn_worker_kv_total_blocks", "worker"),
    )


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q`` quantile of cumulative ``buckets``, interpolated linearly inside the
    bucket it falls in (Prometheus' rule); None when the histogram is empty. A quantile
    in the +Inf bucket is the highest finite bound."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            share = (rank - below) / inside if inside > 0 else 1.0
            return lower + (bound - lower) * share
        lower, below = bound, count
    return lower


def _increase(new: float, old: float) -> float:
    # A counter that went down restarted (a role process came back): count from zero.
    return new - old if new >= old else new


def _diff(new: Mapping[Any, float], old: Mapping[Any, float]) -> dict[Any, float]:
    return {key: _increase(value, old.get(key, 0.0)) for key, value in new.items()}


def _percentiles(new: Buckets, old: Buckets) -> dict[str, float | None]:
    changed = _diff(new, old)
    return {f"p{round(q * 100)}": histogram_quantile(q, changed) for q in PERCENTILES}


def window(snapshots: Sequence[Snapshot], span_s: float = WINDOW_S) -> dict[str, Any]:
    """The figures over the last ``span_s`` of ``snapshots`` (oldest first): each rate is
    the newest snapshot against the newest one at least ``span_s`` older (or the oldest
    there is). With a single snapshot the rates are None: there is no interval yet."""
    new = snapshots[-1]
    old = next((s for s in reversed(snapshots) if new.time - s.time >= span_s), snapshots[0])
    seconds = new.time - old.time
    out: dict[str, Any] = {
        "window_s": seconds,
        "queue_depth": new.queue_depth,
        "requests_total": new.requests,
    }
    if seconds <= 0:
        empty: dict[str, float | None] = {f"p{round(q * 100)}": None for q in PERCENTILES}
        out.update(
            requests_per_s=None,
            ttft_s=empty,
            itl_s=dict(empty),
            prefix_hit_rate=None,
            prefills_per_s={},
            routed_per_s={},
        )
        return out
    prompt = _increase(new.prompt_tokens, old.prompt_tokens)
    cached = _increase(new.cached_tokens, old.cached_tokens)
    out.update(
        requests_per_s=_increase(new.requests, old.requests) / seconds,
        ttft_s=_percentiles(new.ttft, old.ttft),
        itl_s=_percentiles(new.itl, old.itl),
        prefix_hit_rate=cached / prompt if prompt > 0 else None,
        prefills_per_s={k: v / seconds for k, v in _diff(new.prefills, old.prefills).items()},
        routed_per_s={k: v / seconds for k, v in _diff(new.routed, old.routed).items()},
    )
    return out


def worker_hit_rates(snapshots: Sequence[Snapshot], span_s: float = WINDOW_S) -> dict[str, float]:
    """Each worker's share of prompt tokens served from its cache over the window."""
    new = snapshots[-1]
    old = next((s for s in reversed(snapshots) if new.time - s.time >= span_s), snapshots[0])
    prompt = _diff(new.worker_prompt, old.worker_prompt) if old is not new else new.worker_prompt
    cached = _diff(new.worker_cached, old.worker_cached) if old is not new else new.worker_cached
    return {w: cached.get(w, 0.0) / p for w, p in prompt.items() if p > 0}
