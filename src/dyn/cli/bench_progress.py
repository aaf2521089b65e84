"""How ``dyn bench`` shows a load test while it runs, on stderr.

On a terminal: a rich display (bar, done/total, req/s, errors, elapsed, ETA), redrawn in
place. Otherwise (a log file, a pipe, CI): one plain line when a phase begins, one every
:data:`~dyn.bench.progress.PLAIN_INTERVAL_S` seconds and one when it ends, with the same
figures. Both keep the :class:`~dyn.bench.progress.Tally` of the phase running, which is
what a stopped run reports.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from dyn.bench.progress import PLAIN_INTERVAL_S, Tally, Throttle, describe, figures

if TYPE_CHECKING:
    from dyn.bench.stats import RequestResult

__all__ = ["LiveDisplay", "PlainLines", "ProgressSink", "make_sink"]


class ProgressSink:
    """The phases of a run and their requests; subclasses decide how they are shown."""

    def __init__(self, arms: Sequence[str] = (), clock: Callable[[], float] = time.monotonic):
        self.arms = list(arms)  # --compare's strategies, to say "arm 2/3"
        self.clock = clock
        self.tally: Tally | None = None

    def label(self, phase: str) -> str:
        arm = phase.split(":")[0]
        if len(self.arms) > 1 and arm in self.arms:
            return f"arm {self.arms.index(arm) + 1}/{len(self.arms)} {phase}"
        return phase

    def start(self, label: str, total: int) -> None:
        self.tally = Tally(self.label(label), total, self.clock())

    def done(self, result: RequestResult) -> None:
        if self.tally is not None:
            self.tally.add(result.ok)

    def tick(self) -> None:
        """Called about once a second, whether or not a request ended."""

    def note(self, text: str) -> None:
        """A line for the user, outside the progress display."""

    def close(self) -> None:
        """The run ended (or stopped): take the display down."""


class PlainLines(ProgressSink):
    """A line per phase start and end, and one every ``interval_s`` in between."""

    def __init__(
        self,
        out: TextIO,
        arms: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
        interval_s: float = PLAIN_INTERVAL_S,
    ) -> None:
        super().__init__(arms, clock)
        self.out = out
        self.throttle = Throttle(interval_s, clock)

    def _write(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def start(self, label: str, total: int) -> None:
        super().start(label, total)
        self.throttle.restart()
        self._write(f"{self.label(label)}: {total} requests")

    def done(self, result: RequestResult) -> None:
        super().done(result)
        tally = self.tally
        if tally is not None and tally.done == tally.total:
            self._write(describe(tally, self.clock()))

    def tick(self) -> None:
        tally = self.tally
        if tally is not None and tally.done < tally.total and self.throttle.due():
            self._write(describe(tally, self.clock()))

    def note(self, text: str) -> None:
        self._write(text)


class LiveDisplay(ProgressSink):
    """A rich progress display on the terminal; it disappears when the run ends."""

    def __init__(self, console: Any, arms: Sequence[str] = ()) -> None:
        from rich.progress import BarColumn, Progress, TextColumn

        super().__init__(arms)
        self.console = console
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[figures]}"),
            console=console,
            transient=True,
        )
        self.task: Any = None
        self.bar.start()

    def start(self, label: str, total: int) -> None:
        super().start(label, total)
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(self.label(label), total=total, figures="")
        self.tick()

    def done(self, result: RequestResult) -> None:
        super().done(result)
        self.tick()

    def tick(self) -> None:
        if self.tally is not None and self.task is not None:
            shown = figures(self.tally, self.clock())
            self.bar.update(self.task, completed=self.tally.done, figures=shown)

    def note(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self.bar.stop()


def make_sink(arms: Sequence[str] = ()) -> ProgressSink:
    """The rich display when stderr is a terminal, else plain lines on stderr."""
    from rich.console import Console

    console = Console(stderr=True)
    if console.is_terminal:
        return LiveDisplay(console, arms)
    return PlainLines(sys.stderr, arms)
