"""What a running load test has done so far, as one line of text, and how often to say it.

Pure: the clock is passed in, nothing is printed here. The CLI shows :class:`Tally`
either in a rich display (on a terminal) or as :func:`describe` lines every
:data:`PLAIN_INTERVAL_S` seconds (in a log or a pipe), and reports a stopped run from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["PLAIN_INTERVAL_S", "Tally", "Throttle", "clock_time", "describe", "figures"]

# How often a plain (non-terminal) progress line is written: often enough that a log
# shows the run is alive, rarely enough that a minute-long run writes about a dozen.
PLAIN_INTERVAL_S = 5.0


@dataclass
class Tally:
    """The requests of one phase (the warm-up, or an arm's measured requests)."""

    label: str
    total: int
    started_s: float
    done: int = 0
    errors: int = 0

    def add(self, ok: bool) -> None:
        self.done += 1
        self.errors += 0 if ok else 1

    def rate(self, now_s: float) -> float:
        """Ended requests per second since the phase began."""
        elapsed = now_s - self.started_s
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta_s(self, now_s: float) -> float | None:
        """Seconds left at the rate so far; None before the first request ends."""
        rate = self.rate(now_s)
        if self.done >= self.total:
            return 0.0
        return (self.total - self.done) / rate if rate > 0 else None


def clock_time(seconds: float | None) -> str:
    """``75.2`` as ``1:15``; ``3725`` as ``1:02:05``; None (unknown) as ``?``."""
    if seconds is None or math.isnan(seconds) or math.isinf(seconds):
        return "?"
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def figures(tally: Tally, now_s: float) -> str:
    """``312/1024 requests, 14.2 req/s, 0 errors, 0:22 elapsed, ETA 0:50``."""
    errors = f"{tally.errors} error" + ("" if tally.errors == 1 else "s")
    return (
        f"{tally.done}/{tally.total} requests, {tally.rate(now_s):.1f} req/s, {errors}, "
        f"{clock_time(now_s - tally.started_s)} elapsed, ETA {clock_time(tally.eta_s(now_s))}"
    )


def describe(tally: Tally, now_s: float) -> str:
    """``kv: 312/1024 requests, 14.2 req/s, 0 errors, 0:22 elapsed, ETA 0:50``."""
    return f"{tally.label}: {figures(tally, now_s)}"


class Throttle:
    """True at most once per ``interval_s`` of ``clock`` (first after one interval)."""

    def __init__(self, interval_s: float, clock: Callable[[], float]) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.last_s = clock()

    def restart(self) -> None:
        self.last_s = self.clock()

    def due(self) -> bool:
        now = self.clock()
        if now - self.last_s < self.interval_s:
            return False
        self.last_s = now
        return True
