"""Benchmark results out: vLLM's text table, a side-by-side comparison, CSV, JSON, plots.

Results are the dictionaries :func:`dyn.bench.stats.summarize` makes (a comparison is a
dictionary of them, keyed by arm), so a saved result can be reported again.
"""

from __future__ import annotations

import csv
import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dyn.bench.stats import DEFAULT_PERCENTILES, METRICS, percentile_key
from dyn.errors import DynError

__all__ = [
    "Interruption",
    "check_plotting",
    "compare_table",
    "cpu_table",
    "plot_cdfs",
    "result_table",
    "stopped_line",
    "write_csv",
    "write_json",
]

# vLLM benchmark_serving's section titles and row names.
_TITLES = {
    "ttft": ("Time to First Token", "TTFT"),
    "tpot": ("Time per Output Token (excl. 1st token)", "TPOT"),
    "itl": ("Inter-token Latency", "ITL"),
    "e2el": ("End-to-end Latency", "E2EL"),
}
_WIDTH = 50


@dataclass(frozen=True)
class Interruption:
    """A live run stopped by a signal before it ended by itself."""

    signal: str  # as the user knows it: "Ctrl-C (SIGINT)"
    exit_code: int  # 128 + the signal's number, as a shell reports it
    running: str | None  # the phase then running ("arm 2/2 kv"), None before the first
    abandoned: bool = False  # a second signal: the arm running then was dropped


def stopped_line(
    stop: Interruption, arms: Mapping[str, Mapping[str, Any]], strategies: Sequence[str] = ()
) -> str:
    """What a stopped run's results cover, in a sentence: which arm was running, after
    how many of its requests, which arms ran to the end and which never began."""
    during = f" during {stop.running}" if stop.running else ""
    if not arms:
        return f"stopped by {stop.signal}{during}, before any measured request ended: no results"
    cuts = {n: r["stopped"] for n, r in arms.items() if isinstance(r.get("stopped"), Mapping)}
    not_run = [s for s in strategies if s not in arms]
    if not (cuts or not_run or stop.abandoned):
        return f"stopped by {stop.signal} after every request had ended: the results are complete"
    tail = "; the rest was abandoned" if stop.abandoned else ""
    if not strategies:
        only = next(iter(cuts.values()), None)
        count = (
            f" after {only['requests_done']} of {only['requests_planned']} requests" if only else ""
        )
        return f"stopped by {stop.signal}{count}{tail}. Partial results:"
    parts = []
    for name in arms:
        cut = cuts.get(name)
        if cut is None:
            parts.append(f"{name} ran to the end")
        else:
            done, planned = cut["requests_done"], cut["requests_planned"]
            parts.append(f"{name} stopped after {done} of {planned} requests")
    if not_run:
        parts.append(f"not run: {', '.join(not_run)}")
    return f"stopped by {stop.signal}{during}: {'; '.join(parts)}{tail}. Partial results:"


def _row(name: str, value: Any) -> str:
    shown = f"{value:<10.2f}" if isinstance(value, float) else f"{value:<10}"
    return f"{name:<40} {shown}".rstrip()


def _rule(title: str, fill: str) -> str:
    return f"{title:{fill}^{_WIDTH}}"


def _share(share: Mapping[str, float]) -> str:
    return ", ".join(f"{worker[:8]} {frac:.0%}" for worker, frac in share.items()) or "n/a"


def _errors(errors: Mapping[str, int]) -> str:
    return ", ".join(f"{kind}: {count}" for kind, count in errors.items()) or "none"


def result_table(
    result: Mapping[str, Any],
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    metrics: Sequence[str] = METRICS,
    title: str = " Serving Benchmark Result ",
) -> str:
    """vLLM's summary layout, then dyn's rows (hit rate, worker share, errors)."""
    lines = [
        _rule(title, "="),
        _row("Successful requests:", result["completed"]),
        _row("Benchmark duration (s):", result["duration"]),
        _row("Total input tokens:", result["total_input_tokens"]),
        _row("Total generated tokens:", result["total_output_tokens"]),
        _row("Request throughput (req/s):", result["request_throughput"]),
        _row("Output token throughput (tok/s):", result["output_throughput"]),
        _row("Total Token throughput (tok/s):", result["total_token_throughput"]),
    ]
    for metric in metrics:
        section, short = _TITLES[metric]
        lines.append(_rule(section, "-"))
        lines.append(_row(f"Mean {short} (ms):", result[f"mean_{metric}_ms"]))
        lines.append(_row(f"Median {short} (ms):", result[f"median_{metric}_ms"]))
        for p in percentiles:
            key = percentile_key(p)
            if p == 50:  # the median, just above
                continue
            lines.append(_row(f"{key.upper()} {short} (ms):", result[f"{key}_{metric}_ms"]))
    lines += [
        _rule("dyn", "-"),
        _row("Failed requests:", result["failed"]),
        _row("Errors by status:", _errors(result.get("errors_by_status", {}))),
        _row("Prefix cache hit rate:", f"{result['prefix_hit_rate']:.1%}"),
        _row("Worker request share:", _share(result.get("worker_request_share", {}))),
    ]
    if isinstance(result.get("server_cpu"), Mapping):
        lines += [_rule("Server CPU (this machine)", "-"), *cpu_table(result["server_cpu"])]
    lines.append("=" * _WIDTH)
    return "\n".join(lines)


def _compact(roles: Sequence[str]) -> str:
    """``worker[0], worker[1], worker[2]`` as ``worker[0-2]``; other names as they are."""
    out: list[str] = []
    runs: list[tuple[str, int, int]] = []  # (name, first, last) of a run of replicas
    for role in roles:
        name, _, rest = role.partition("[")
        index = rest[:-1]
        if rest.endswith("]") and index.isdigit():
            if runs and runs[-1][0] == name and runs[-1][2] + 1 == int(index):
                runs[-1] = (name, runs[-1][1], int(index))
                continue
            runs.append((name, int(index), int(index)))
            out.append("")  # filled in below, keeping the order
        else:
            out.append(role)
    it = iter(runs)
    for i, text in enumerate(out):
        if text == "":
            name, first, last = next(it)
            out[i] = f"{name}[{first}]" if first == last else f"{name}[{first}-{last}]"
    return ", ".join(out)


def _figure(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def cpu_table(cpu: Mapping[str, Any]) -> list[str]:
    """One line per process of the run (pid, its roles, CPU seconds, per request and per
    output token), the total, and the roles that could not be measured."""
    header = ("pid", "roles", "CPU s", "ms/req", "µs/tok")
    rows = [(str(p["pid"]), _compact(p["roles"]), *_figures(p)) for p in cpu.get("processes", [])]
    rows.append(("total", "", *_figures(cpu)))
    table = [header, *rows]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(widths[c]) if c < 2 else cell.rjust(widths[c]) for c, cell in enumerate(row)
        ).rstrip()
        for row in table
    ]
    for missing in cpu.get("not_measured", []):
        lines.append(f"not measured: {_compact(missing['roles'])} ({missing['reason']})")
    return lines


def _figures(entry: Mapping[str, Any]) -> tuple[str, str, str]:
    return (
        _figure(entry.get("cpu_s"), ".2f"),
        _figure(entry.get("ms_per_request"), ".3f"),
        _figure(entry.get("us_per_output_token"), ".1f"),
    )


def _compare_rows(
    percentiles: Sequence[float], metrics: Sequence[str]
) -> list[tuple[str, str, bool]]:
    """(label, result key, higher is better) for the comparison table."""
    rows = [
        ("Successful requests", "completed", True),
        ("Failed requests", "failed", False),
        ("Benchmark duration (s)", "duration", False),
        ("Request throughput (req/s)", "request_throughput", True),
        ("Output token throughput (tok/s)", "output_throughput", True),
    ]
    for metric in metrics:
        short = _TITLES[metric][1]
        rows.append((f"Mean {short} (ms)", f"mean_{metric}_ms", False))
        rows.append((f"Median {short} (ms)", f"median_{metric}_ms", False))
        for p in percentiles:
            key = percentile_key(p)
            if p == 50:
                continue
            rows.append((f"{key.upper()} {short} (ms)", f"{key}_{metric}_ms", False))
    rows.append(("Prefix cache hit rate", "prefix_hit_rate", True))
    return rows


def _cpu_per_request(result: Mapping[str, Any]) -> Any:
    cpu = result.get("server_cpu")
    return cpu.get("ms_per_request") if isinstance(cpu, Mapping) else None


def compare_table(
    arms: Mapping[str, Mapping[str, Any]],
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    metrics: Sequence[str] = METRICS,
) -> str:
    """One column per arm; later arms show their ratio to the first (``×0.50``)."""
    names = list(arms)
    header = ["", *names]
    table = [header]
    for label, key, _ in _compare_rows(percentiles, metrics):
        base = arms[names[0]][key]
        cells = [label]
        for i, name in enumerate(names):
            value = arms[name][key]
            text = f"{value:.1%}" if key == "prefix_hit_rate" else _number(value)
            if i and isinstance(base, int | float) and base:
                text += f" (×{value / base:.2f})"
            cells.append(text)
        table.append(cells)
    share = ["Busiest worker share"]
    share += [
        f"{max(arms[n].get('worker_request_share', {}).values(), default=0):.0%}" for n in names
    ]
    table.append(share)
    if any(_cpu_per_request(arms[n]) is not None for n in names):
        table.append(
            ["Server CPU per request (ms)"]
            + [_figure(_cpu_per_request(arms[n]), ".3f") for n in names]
        )
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    lines = []
    for r, row in enumerate(table):
        cells = [row[0].ljust(widths[0])] + [row[c].rjust(widths[c]) for c in range(1, len(row))]
        lines.append("  ".join(cells).rstrip())
        if r == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    try:
        Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise DynError(f"cannot write {path}: {exc.strerror}") from exc


CSV_COLUMNS = (
    "arm",
    "index",
    "error",
    "input_len",
    "output_len",
    "cached_tokens",
    "ttft_ms",
    "tpot_ms",
    "mean_itl_ms",
    "e2el_ms",
)


def write_csv(path: str | Path, arms: Mapping[str, Mapping[str, Any]]) -> None:
    """One row per request of every arm (a single run is one arm)."""
    try:
        with Path(path).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            for arm, result in arms.items():
                for i, ttft in enumerate(result["ttfts"]):
                    out_len, e2el, itls = (
                        result["output_lens"][i],
                        result["e2els"][i],
                        result["itls"][i],
                    )
                    tpot = (e2el - ttft) / (out_len - 1) * 1000 if out_len > 1 else ""
                    writer.writerow(
                        [
                            arm,
                            i,
                            result["errors"][i],
                            result["input_lens"][i],
                            out_len,
                            result["cached_tokens"][i],
                            ttft * 1000,
                            tpot,
                            sum(itls) / len(itls) * 1000 if itls else "",
                            e2el * 1000,
                        ]
                    )
    except OSError as exc:
        raise DynError(f"cannot write {path}: {exc.strerror}") from exc


def check_plotting() -> Any:
    """The ``matplotlib`` module; checked before a run so a long benchmark is not wasted."""
    try:
        return importlib.import_module("matplotlib")
    except ImportError:
        raise DynError("--plot needs matplotlib: pip install 'dyn[plot]'") from None


def plot_cdfs(path: str | Path, arms: Mapping[str, Mapping[str, Any]]) -> None:
    """TTFT and end-to-end latency CDFs, one line per arm, into an image file."""
    matplotlib = check_plotting()
    matplotlib.use("Agg")  # no display needed
    pyplot = importlib.import_module("matplotlib.pyplot")
    figure, axes = pyplot.subplots(1, 2, figsize=(11, 4))
    for axis, key, title in ((axes[0], "ttfts", "TTFT"), (axes[1], "e2els", "End-to-end latency")):
        for arm, result in arms.items():
            values = sorted(
                v * 1000 for v, err in zip(result[key], result["errors"], strict=True) if not err
            )
            if values:
                fractions = [(i + 1) / len(values) for i in range(len(values))]
                axis.step(values, fractions, where="post", label=arm)
        axis.set_title(f"{title} CDF")
        axis.set_xlabel("ms")
        axis.set_ylabel("fraction of requests")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    try:
        figure.savefig(path)
    except OSError as exc:
        raise DynError(f"cannot write {path}: {exc.strerror}") from exc
    finally:
        pyplot.close(figure)
