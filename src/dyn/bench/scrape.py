"""Prometheus text exposition: parse a ``/metrics`` page and diff two of them.

A benchmark scrapes before and after its measured requests; the difference of the
counters is what those requests did on the server (which worker the router picked, how
many prompt tokens were cached), whatever ran before.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypeAlias

__all__ = [
    "SERVER_COUNTERS",
    "Samples",
    "by_label",
    "delta",
    "parse_metrics",
    "server_delta",
    "total",
]

# (metric name, sorted (label, value) pairs) -> value
SampleKey: TypeAlias = tuple[str, tuple[tuple[str, str], ...]]
Samples: TypeAlias = dict[SampleKey, float]

# The counters a benchmark result reports the change of, summed over their labels.
SERVER_COUNTERS = (
    "dyn_frontend_requests_total",
    "dyn_router_decisions_total",
    "dyn_prompt_tokens_total",
    "dyn_cached_prompt_tokens_total",
    "dyn_frontend_cached_prompt_tokens_total",
    "dyn_worker_requests_total",
)

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse_metrics(text: str) -> Samples:
    """Every sample of a text exposition page; comments and malformed lines are skipped."""
    samples: Samples = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.fullmatch(line)
        if match is None:
            continue
        name, raw_labels, raw_value = match.groups()
        try:
            value = float(raw_value)
        except ValueError:
            continue
        labels = []
        if raw_labels:
            for found in _LABEL.finditer(raw_labels):
                escaped = re.sub(r"\\.", lambda m: _UNESCAPE.get(m.group(0), m.group(0)), found[2])
                labels.append((found[1], escaped))
        samples[(name, tuple(sorted(labels)))] = value
    return samples


def delta(before: Samples, after: Samples) -> Samples:
    """``after - before`` per sample; a sample new in ``after`` counts from 0.

    Meant for counters; a counter that went down (the server restarted) gives its value
    in ``after``, as Prometheus' ``increase`` treats a reset.
    """
    out: Samples = {}
    for key, value in after.items():
        previous = before.get(key, 0.0)
        out[key] = value - previous if value >= previous else value
    return out


def total(samples: Samples, name: str) -> float:
    """The sum of ``name`` over all its labels."""
    return sum(value for (metric, _), value in samples.items() if metric == name)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """``name`` summed per value of ``label`` (samples without that label are skipped)."""
    out: dict[str, float] = {}
    for (metric, labels), value in samples.items():
        if metric != name:
            continue
        key = dict(labels).get(label)
        if key is not None:
            out[key] = out.get(key, 0.0) + value
    return out


def server_delta(changes: Samples, names: Sequence[str] = SERVER_COUNTERS) -> dict[str, float]:
    """The change of each counter in ``names`` that the server exposes."""
    present = {metric for metric, _ in changes}
    return {name: total(changes, name) for name in names if name in present}
