"""Tables that fit the terminal: the most important columns first, the rest on ``--wide``.

A rich table squeezed below its natural width wraps and truncates every cell until none
is legible. Instead the columns are taken in order of importance while the table still
fits at its natural width; the others are left out and the caption names them and how to
see them. With no width (``--wide``) every column is shown and the console is widened to
fit (a narrow terminal then wraps lines, or ``less -S`` scrolls them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = ["Column", "fit_table", "print_table"]


@dataclass(frozen=True, slots=True)
class Column:
    """One column; ``priority`` 0 is always shown, higher numbers go first when narrow."""

    header: str
    priority: int
    justify: Literal["left", "right"] = "left"


def fit_table(
    console: Console,
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    *,
    width: int | None,
    title: str,
    caption: str | None = None,
    wide_hint: str = "--wide",
) -> Table:
    """The table of ``rows`` (cells as rich markup, in ``columns``' order) within
    ``width`` columns, or with every column when ``width`` is None."""
    shown = set(range(len(columns)))
    if width is not None:
        shown = set()
        for index in sorted(range(len(columns)), key=lambda i: columns[i].priority):
            trial = shown | {index}
            if (
                columns[index].priority == 0
                or _natural_width(console, _build(columns, rows, trial, title, None)) <= width
            ):
                shown = trial
    hidden = [column.header for i, column in enumerate(columns) if i not in shown]
    notes = [caption] if caption else []
    if hidden:
        notes.append(f"not shown: {', '.join(hidden)}; {wide_hint} shows every column")
    return _build(columns, rows, shown, title, "\n".join(notes) or None)


def print_table(console: Console, table: Table) -> None:
    """Print at the console's width, widened if the table needs more (``--wide``)."""
    needed = _natural_width(console, table)
    if needed > console.width:
        console.width = needed
    console.print(table)


def _natural_width(console: Console, table: Table) -> int:
    from rich.measure import Measurement

    # Measured as if the console were unbounded: the width at which no cell wraps.
    options = console.options.update(width=10_000, max_width=10_000)
    return Measurement.get(console, options, table).maximum


def _build(
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    shown: set[int],
    title: str,
    caption: str | None,
) -> Table:
    from rich import box
    from rich.table import Table

    keep = sorted(shown)
    # No vertical rules: columns are two spaces apart, as in `ps` or `kubectl`.
    table = Table(
        title=title,
        caption=caption,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for index in keep:
        column = columns[index]
        table.add_column(column.header, justify=column.justify)
    for row in rows:
        table.add_row(*(row[index] for index in keep))
    return table
