"""A trade-off plot as a self-contained SVG, written by hand: no plotting library.

One point per arm of a sweep, panels side by side sharing the x quantity (prefix reuse)
with one y quantity each (TTFT p50, end-to-end p90); every point is labelled with its
value and the points are joined in sweep order. The output depends on the figures only
(no dates, no random ids), so the same sweep gives the same file, and it reads in a
browser or on GitHub as is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from dyn.errors import DynError

__all__ = ["Axis", "Panel", "nice_axis", "tradeoff_svg", "write_tradeoff_svg"]

PANEL_WIDTH = 420
PANEL_HEIGHT = 320
MARGIN_LEFT = 64  # room for the y tick labels and the y title
MARGIN_TOP = 64  # the figure's title and subtitle, then the panel's title
MARGIN_BOTTOM = 52  # x tick labels and the x title
GAP = 24
PLOT_WIDTH = PANEL_WIDTH - MARGIN_LEFT - GAP
PLOT_HEIGHT = PANEL_HEIGHT - MARGIN_BOTTOM - 24
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
FONT = 'font-family="sans-serif"'


@dataclass(frozen=True)
class Panel:
    """One y quantity: the panel's title, its axis title, one value per point."""

    title: str
    y_label: str
    ys: Sequence[float]


@dataclass(frozen=True)
class Axis:
    low: float
    high: float
    step: float

    def ticks(self) -> list[float]:
        count = round((self.high - self.low) / self.step)
        return [self.low + i * self.step for i in range(count + 1)]

    def fraction(self, value: float) -> float:
        return (value - self.low) / (self.high - self.low)


def nice_axis(values: Sequence[float], ticks: int = 5) -> Axis:
    """A range holding every value with a little room, cut at round steps (1, 2, 2.5 or
    5 times a power of ten) into about ``ticks`` intervals."""
    low, high = min(values), max(values)
    span = high - low
    pad = span * 0.08 if span > 0 else max(abs(low) * 0.1, 1.0)
    low, high = low - pad, high + pad
    raw = (high - low) / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return Axis(math.floor(low / step) * step, math.ceil(high / step) * step, step)


def _tick_text(value: float, step: float) -> str:
    decimals = 0  # as many as the step needs: 2.5 needs one, 0.05 two
    while decimals < 6 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-9:
        decimals += 1
    text = f"{value:,.{decimals}f}"
    return "0" if text.strip("-0.,") == "" else text


def _n(value: float) -> str:
    return f"{value:.1f}"


def _panel(
    index: int, panel: Panel, labels: Sequence[str], xs: Sequence[float], x_axis: Axis, x_label: str
) -> list[str]:
    colour = COLOURS[index % len(COLOURS)]
    left = index * PANEL_WIDTH + MARGIN_LEFT
    top = MARGIN_TOP
    y_axis = nice_axis(panel.ys)
    out = [f'<g class="panel" id="panel-{index}">']
    out.append(
        f'<rect class="plot-area" x="{left}" y="{top}" width="{PLOT_WIDTH}" '
        f'height="{PLOT_HEIGHT}" fill="#fafafa" stroke="#888"/>'
    )
    out.append(
        f'<text x="{_n(left + PLOT_WIDTH / 2)}" y="{top - 8}" text-anchor="middle" '
        f'font-size="13" font-weight="bold" {FONT}>{escape(panel.title)}</text>'
    )

    def px(x: float) -> float:
        return left + x_axis.fraction(x) * PLOT_WIDTH

    def py(y: float) -> float:
        return top + (1 - y_axis.fraction(y)) * PLOT_HEIGHT

    for tick in x_axis.ticks():
        x = _n(px(tick))
        out.append(
            f'<line x1="{x}" y1="{top}" x2="{x}" y2="{top + PLOT_HEIGHT}" stroke="#e4e4e4"/>'
        )
        out.append(
            f'<text x="{x}" y="{top + PLOT_HEIGHT + 16}" text-anchor="middle" font-size="11" '
            f"{FONT}>{_tick_text(tick, x_axis.step)}</text>"
        )
    for tick in y_axis.ticks():
        y = _n(py(tick))
        out.append(
            f'<line x1="{left}" y1="{y}" x2="{left + PLOT_WIDTH}" y2="{y}" stroke="#e4e4e4"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{y}" dy="4" text-anchor="end" font-size="11" '
            f"{FONT}>{_tick_text(tick, y_axis.step)}</text>"
        )
    out.append(
        f'<text x="{_n(left + PLOT_WIDTH / 2)}" y="{top + PLOT_HEIGHT + 38}" '
        f'text-anchor="middle" font-size="12" {FONT}>{escape(x_label)}</text>'
    )
    mid = _n(top + PLOT_HEIGHT / 2)
    out.append(
        f'<text x="{left - 48}" y="{mid}" text-anchor="middle" font-size="12" {FONT} '
        f'transform="rotate(-90 {left - 48} {mid})">{escape(panel.y_label)}</text>'
    )
    points = [(px(x), py(y)) for x, y in zip(xs, panel.ys, strict=True)]
    path = " ".join(f"{_n(x)},{_n(y)}" for x, y in points)
    out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-opacity="0.35"/>')
    for label, x_value, y_value, (cx, cy) in zip(labels, xs, panel.ys, points, strict=True):
        tip = f"{label}: x {x_value:g}, y {y_value:g}"
        out.append(
            f'<circle class="point" cx="{_n(cx)}" cy="{_n(cy)}" r="4.5" fill="{colour}">'
            f"<title>{escape(tip)}</title></circle>"
        )
        # Labels sit to the right of their point, or to its left near the right edge.
        anchor, dx = ("start", 7) if cx < left + PLOT_WIDTH - 60 else ("end", -7)
        out.append(
            f'<text class="point-label" x="{_n(cx + dx)}" y="{_n(cy - 6)}" '
            f'text-anchor="{anchor}" font-size="11" {FONT}>{escape(label)}</text>'
        )
    out.append("</g>")
    return out


def tradeoff_svg(
    labels: Sequence[str],
    xs: Sequence[float],
    panels: Sequence[Panel],
    *,
    title: str,
    subtitle: str = "",
    x_label: str,
) -> str:
    """The SVG document: ``panels`` side by side, point ``i`` at ``(xs[i], ys[i])`` in
    each, labelled ``labels[i]``."""
    if not xs or not panels or any(len(p.ys) != len(xs) for p in panels) or len(labels) != len(xs):
        raise ValueError("a trade-off plot needs one label, x and y per point, in every panel")
    width = PANEL_WIDTH * len(panels)
    height = MARGIN_TOP + PANEL_HEIGHT - 8
    x_axis = nice_axis(xs)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{MARGIN_LEFT}" y="20" font-size="15" font-weight="bold" {FONT}>'
        f"{escape(title)}</text>",
    ]
    if subtitle:
        out.append(
            f'<text x="{MARGIN_LEFT}" y="38" font-size="12" fill="#555" {FONT}>'
            f"{escape(subtitle)}</text>"
        )
    for index, panel in enumerate(panels):
        out += _panel(index, panel, labels, xs, x_axis, x_label)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_tradeoff_svg(path: str | Path, document: str) -> None:
    try:
        Path(path).write_text(document, encoding="utf-8")
    except OSError as exc:
        raise DynError(f"cannot write {path}: {exc.strerror}") from exc
