"""Benchmark statistics: per-request outcomes in, vLLM's result dictionary out.

Definitions follow vLLM's ``benchmark_serving``: TTFT is the time to the first content
chunk; ITL are the gaps between later content chunks (all of them, pooled); TPOT is
``(e2el - ttft) / (output_tokens - 1)`` per request with more than one output token;
percentiles interpolate linearly (numpy's default); std is the population std. Only
successful requests enter the figures; the per-request arrays hold every request.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_PERCENTILES",
    "METRICS",
    "RequestResult",
    "percentile",
    "percentile_key",
    "shares",
    "summarize",
]

DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)
METRICS = ("ttft", "tpot", "itl", "e2el")


@dataclass
class RequestResult:
    """What happened to one request. ``status`` is the HTTP status (200 for a stream that
    broke midway), ``None`` when no response came; ``error`` is empty on success."""

    index: int
    input_len: int
    ok: bool = False
    status: int | None = None
    error: str = ""
    start_s: float = 0.0
    ttft_s: float = 0.0
    e2el_s: float = 0.0
    itls_s: list[float] = field(default_factory=list)
    output_len: int = 0
    cached_tokens: int = 0

    @property
    def error_kind(self) -> str:
        """The key this failure counts under: the status code, or what broke."""
        if self.status is None:
            return "connection"
        return str(self.status) if self.status != 200 else "stream"

    @property
    def tpot_s(self) -> float | None:
        if self.output_len < 2:
            return None
        return (self.e2el_s - self.ttft_s) / (self.output_len - 1)


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) with linear interpolation; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def percentile_key(p: float) -> str:
    """``p99`` for 99, ``p99.9`` for 99.9, as vLLM names its keys."""
    return f"p{int(p)}" if float(p).is_integer() else f"p{p}"


def shares(counts: Mapping[str, float]) -> dict[str, float]:
    """Each key's fraction of the total (empty when the total is 0)."""
    total = sum(counts.values())
    if total <= 0:
        return {}
    return {key: value / total for key, value in sorted(counts.items())}


def summarize(
    results: Sequence[RequestResult],
    duration_s: float,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """vLLM's result keys, dyn's ``prefix_hit_rate`` and ``errors_by_status``, ``extra``,
    then the per-request arrays (seconds, like vLLM's)."""
    done = [r for r in results if r.ok]
    total_input = sum(r.input_len for r in done)
    total_output = sum(r.output_len for r in done)
    cached = sum(r.cached_tokens for r in done)
    duration = max(duration_s, 1e-9)
    series: dict[str, list[float]] = {
        "ttft": [r.ttft_s for r in done],
        "tpot": [t for r in done if (t := r.tpot_s) is not None],
        "itl": [gap for r in done for gap in r.itls_s],
        "e2el": [r.e2el_s for r in done],
    }
    out: dict[str, Any] = {
        "duration": duration_s,
        "completed": len(done),
        "failed": len(results) - len(done),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(done) / duration,
        "output_throughput": total_output / duration,
        "total_token_throughput": (total_input + total_output) / duration,
        "prefix_hit_rate": cached / total_input if total_input else 0.0,
        "errors_by_status": dict(
            sorted(Counter(r.error_kind for r in results if not r.ok).items())
        ),
    }
    for metric in METRICS:
        values_ms = [v * 1000 for v in series[metric]]
        out[f"mean_{metric}_ms"] = statistics.fmean(values_ms) if values_ms else 0.0
        out[f"median_{metric}_ms"] = statistics.median(values_ms) if values_ms else 0.0
        out[f"std_{metric}_ms"] = statistics.pstdev(values_ms) if values_ms else 0.0
        for p in percentiles:
            out[f"{percentile_key(p)}_{metric}_ms"] = percentile(values_ms, p)
    out.update(extra or {})
    out.update(
        input_lens=[r.input_len for r in results],
        # As vLLM: a failed request generated nothing that counts.
        output_lens=[r.output_len if r.ok else 0 for r in results],
        ttfts=[r.ttft_s for r in results],
        itls=[list(r.itls_s) for r in results],
        e2els=[r.e2el_s for r in results],
        cached_tokens=[r.cached_tokens for r in results],
        errors=[r.error for r in results],
    )
    return out
