"""Stop strings: cut a stream of text deltas before the first stop string it contains
(the first to be complete, reading the text from the start).

A stop string may span deltas (tokens), so text that could be the start of one is held
back until the next delta shows whether it is; that is at most the longest stop string
minus one character. Each delta costs O(its length + that hold) per stop string to
search, plus O(hold²) per stop string to find what to hold back: bounded by the stop
strings' lengths, independent of how long the stream is. Used only for requests that
give stop strings.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["StopMatcher"]


class StopMatcher:
    """One stream's stop-string state. Feed it every delta; emit what it returns."""

    __slots__ = ("_held", "_longest", "_stops")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        if not self._stops:
            raise ValueError("StopMatcher needs at least one non-empty stop string")
        self._longest = max(map(len, self._stops))
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """The text that may be emitted now, and whether a stop string was found (then
        that text is everything before it and the stream is over)."""
        buffer = self._held + text
        cut = -1
        first_end = len(buffer) + 1
        for stop in self._stops:
            # A match ending in held text alone was looked for already: start just after.
            at = buffer.find(stop, max(0, len(self._held) - len(stop) + 1))
            if at == -1:
                continue
            # The stop string that is complete first wins (as if the text came a character
            # at a time, so the answer does not depend on how it was split into tokens);
            # of two complete at once, the longer.
            end = at + len(stop)
            if end < first_end or (end == first_end and at < cut):
                cut, first_end = at, end
        if cut != -1:
            self._held = ""
            return buffer[:cut], True
        keep = self._partial(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        """The end of the stream: whatever was held back (no stop string followed)."""
        held, self._held = self._held, ""
        return held

    def _partial(self, buffer: str) -> int:
        """The length of the longest end of ``buffer`` that starts some stop string."""
        for size in range(min(len(buffer), self._longest - 1), 0, -1):
            tail = buffer[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0
