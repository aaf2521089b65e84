"""``dyn bench --sim --sweep KEY=V1,V2,...``: what may be swept, its values, and the table.

A sweep is a comparison whose arms differ in one key: a setting of the benchmark (the
worker count, the arrival speedup, ...), the routing strategy itself, or one of the
strategy's options. The options are not listed here: the strategy class names them
(its ``OPTIONS``), so a new strategy is sweepable as soon as it exists. Pure: parsing
and formatting only; :mod:`dyn.cli.bench_sweep` loads strategies and runs the arms.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from dyn.bench.stats import percentile_key
from dyn.errors import DynError

__all__ = [
    "BENCH_KEYS",
    "STRATEGY_KEY",
    "BenchKey",
    "Sweep",
    "SweepValue",
    "option_value",
    "resolve_sweep",
    "split_sweep",
    "sweep_table",
]

STRATEGY_KEY = "strategy"
EXAMPLE = "overlap_score_weight=0,1,2,4,8"


@dataclass(frozen=True)
class BenchKey:
    """A ``dyn bench`` option that may be swept: its type and smallest valid value."""

    kind: type[int] | type[float]
    minimum: float
    exclusive: bool = False  # the minimum itself is not valid
    infinite: bool = False  # "inf" is valid


# Each is the BenchOptions field (and flag) of the same name, applied to every arm as
# if given on the command line.
BENCH_KEYS: dict[str, BenchKey] = {
    "workers": BenchKey(int, 1),
    "trace_speedup": BenchKey(float, 0, exclusive=True),
    "request_rate": BenchKey(float, 0, exclusive=True, infinite=True),
    "max_concurrency": BenchKey(int, 0),
    "num_gpu_blocks": BenchKey(int, 1),
    "max_num_seqs": BenchKey(int, 1),
    "max_num_batched_tokens": BenchKey(int, 1),
    "speedup_ratio": BenchKey(float, 0, exclusive=True),
    "router_replicas": BenchKey(int, 1),
    "router_sync_delay_ms": BenchKey(float, 0),
}


@dataclass(frozen=True)
class SweepValue:
    text: str  # as typed: the arm's label and the table's cell
    value: Any  # as the arm takes it


@dataclass(frozen=True)
class Sweep:
    """One key and its values. ``kind`` says where a value goes: a bench option of
    that name, the strategy, or option ``option`` of strategy ``strategy``."""

    key: str
    kind: Literal["bench", "strategy", "option"]
    values: tuple[SweepValue, ...]
    strategy: str | None = None
    option: str | None = None

    def label(self, value: SweepValue) -> str:
        return f"{self.key}={value.text}"


def split_sweep(text: str) -> tuple[str, list[str]]:
    """``KEY=V1,V2,...`` as its key (hyphens as underscores) and value texts."""
    key, sep, rest = text.partition("=")
    key = key.strip().replace("-", "_")
    values = [part.strip() for part in rest.split(",")]
    if not sep or not key:
        raise DynError(f"--sweep takes KEY=V1,V2,..., e.g. {EXAMPLE}; got {text!r}")
    if not rest.strip():
        raise DynError(f"--sweep {key}= lists no values; give them as {key}=V1,V2,...")
    if "" in values:
        raise DynError(f"--sweep {key}: an empty value in {rest!r}; separate values by one comma")
    if len(set(values)) != len(values):
        raise DynError(f"--sweep {key}: each value once, got {rest!r}")
    return key, values


def resolve_sweep(
    key: str, texts: Sequence[str], *, strategy: str, option_names: Sequence[str] | None
) -> Sweep:
    """The sweep of ``key``: a bench key, ``strategy``, an option of ``strategy`` (whose
    class lists ``option_names``; ``None``: it takes none), or ``OTHER.OPTION``, an option
    of another strategy (whose names the caller checks). Values are checked here as far
    as their type goes; the strategy checks its options' values itself."""
    if key in BENCH_KEYS:
        spec = BENCH_KEYS[key]
        return Sweep(key, "bench", tuple(SweepValue(t, _bench_value(key, spec, t)) for t in texts))
    if key == STRATEGY_KEY:
        names = [t.replace("-", "_") for t in texts]
        if len(set(names)) != len(names):
            raise DynError(f"--sweep strategy: each strategy once, got {', '.join(texts)}")
        values = tuple(SweepValue(t, n) for t, n in zip(texts, names, strict=True))
        return Sweep(key, "strategy", values)
    owner, dot, option = key.rpartition(".")
    if dot and owner and option:
        values = tuple(SweepValue(t, option_value(t)) for t in texts)
        return Sweep(key, "option", values, strategy=owner, option=option)
    if option_names and key in option_names:
        values = tuple(SweepValue(t, option_value(t)) for t in texts)
        return Sweep(key, "option", values, strategy=strategy, option=key)
    options = (
        f"an option of the {strategy} strategy ({', '.join(sorted(option_names))})"
        if option_names
        else f"an option of a strategy (the {strategy} strategy takes none)"
    )
    raise DynError(
        f"unknown --sweep key {key!r}; valid: {STRATEGY_KEY}, {', '.join(BENCH_KEYS)}, "
        f"{options}, or STRATEGY.OPTION"
    )


def _bench_value(key: str, spec: BenchKey, text: str) -> int | float:
    what = "a whole number" if spec.kind is int else "a number"
    bound = f"above {spec.minimum:g}" if spec.exclusive else f"at least {spec.minimum:g}"
    try:
        value = spec.kind(text)
    except ValueError:
        value = None
    ok = value is not None and not math.isnan(value) and (spec.infinite or not math.isinf(value))
    if ok and value is not None:
        ok = value > spec.minimum if spec.exclusive else value >= spec.minimum
    if not ok or value is None:
        raise DynError(f"--sweep {key}: {text!r} is not valid; each value is {what} {bound}")
    return value


_INT = re.compile(r"[+-]?\d+")


def option_value(text: str) -> Any:
    """A strategy option's value as a graph file would give it: a whole number, a
    number, true/false, or else the text itself."""
    if _INT.fullmatch(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        pass
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return text


# -- the table --------------------------------------------------------------------------


def _columns(percentiles: Sequence[float], metrics: Sequence[str]) -> list[tuple[str, str]]:
    """(header, result key) of each figure, left to right."""
    columns = [("reuse", "prefix_hit_rate"), ("req/s", "request_throughput")]
    for metric, short in (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2el", "E2EL")):
        if metric not in metrics:
            continue
        columns.append((f"{short} mean", f"mean_{metric}_ms"))
        if metric == "tpot":  # the decode slowdown in one figure: the row stays readable
            continue
        columns.append((f"{short} p50", f"median_{metric}_ms"))
        for p in percentiles:
            if p != 50:
                key = percentile_key(p)
                columns.append((f"{short} {key}", f"{key}_{metric}_ms"))
    return columns


def sweep_table(
    sweep: Sweep,
    arms: Mapping[str, Mapping[str, Any]],
    percentiles: Sequence[float],
    metrics: Sequence[str],
) -> str:
    """One row per value that ran: prefix reuse, req/s, TTFT and end-to-end latency
    (mean, p50, the other percentiles; ms), mean TPOT, the busiest worker's share of the
    requests, and the failed requests."""
    columns = _columns(percentiles, metrics)
    header = [sweep.key, *(name for name, _ in columns), "busiest", "failed"]
    rows = [header]
    for value in sweep.values:
        result = arms.get(sweep.label(value))
        if result is None:
            continue
        cells = [value.text]
        for _, key in columns:
            figure = result[key]
            cells.append(f"{figure:.1%}" if key == "prefix_hit_rate" else f"{figure:,.1f}")
        share = result.get("worker_request_share", {})
        cells += [f"{max(share.values(), default=0):.0%}", str(result["failed"])]
        rows.append(cells)
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    lines = []
    for r, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [row[c].rjust(widths[c]) for c in range(1, len(row))]
        lines.append("  ".join(cells).rstrip())
        if r == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)
