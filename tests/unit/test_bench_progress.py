"""dyn bench's progress figures, their throttle, the plain-line display, and the sentence
that says what a stopped run's results cover."""

from __future__ import annotations

import io
from typing import Any

from dyn.bench.progress import Tally, Throttle, clock_time, describe
from dyn.bench.report import Interruption, stopped_line
from dyn.bench.stats import RequestResult
from dyn.cli.bench_progress import PlainLines


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_describe_gives_done_rate_errors_elapsed_and_eta() -> None:
    tally = Tally("kv", 1024, started_s=0.0)
    for i in range(312):
        tally.add(ok=i % 100 != 0)  # 4 failures
    assert describe(tally, 22.0) == (
        "kv: 312/1024 requests, 14.2 req/s, 4 errors, 0:22 elapsed, ETA 0:50"
    )
    assert describe(Tally("kv", 8, 0.0), 3.0).endswith("0 errors, 0:03 elapsed, ETA ?")
    assert clock_time(3725) == "1:02:05"
    assert clock_time(None) == "?"


def test_throttle_says_due_once_per_interval() -> None:
    clock = Clock()
    throttle = Throttle(5.0, clock)
    dues = []
    for _ in range(24):  # 12 s in half-second steps
        clock.now += 0.5
        dues.append(throttle.due())
    assert [i for i, due in enumerate(dues) if due] == [9, 19]  # at 5 s and 10 s


def test_plain_lines_start_every_interval_and_end() -> None:
    clock, out = Clock(), io.StringIO()
    sink = PlainLines(out, arms=["round_robin", "kv"], clock=clock, interval_s=5.0)
    sink.start("kv", 3)
    for step in range(12):  # a tick a second, a request ending every 4 s
        clock.now += 1
        if step % 4 == 3:
            sink.done(RequestResult(index=step, input_len=1, ok=True))
        sink.tick()
    lines = out.getvalue().splitlines()
    assert lines == [
        "arm 2/2 kv: 3 requests",
        "arm 2/2 kv: 1/3 requests, 0.2 req/s, 0 errors, 0:05 elapsed, ETA 0:10",
        "arm 2/2 kv: 2/3 requests, 0.2 req/s, 0 errors, 0:10 elapsed, ETA 0:05",
        "arm 2/2 kv: 3/3 requests, 0.2 req/s, 0 errors, 0:12 elapsed, ETA 0:00",
    ]
    assert sink.tally is not None
    assert sink.tally.label == "arm 2/2 kv"


SIGINT = Interruption("Ctrl-C (SIGINT)", 130, "arm 2/3 kv")


def test_stopped_line_says_what_the_results_cover() -> None:
    cut: dict[str, Any] = {"stopped": {"requests_done": 312, "requests_planned": 1024}}
    single = Interruption("Ctrl-C (SIGINT)", 130, "kv")
    assert stopped_line(single, {"kv": cut}) == (
        "stopped by Ctrl-C (SIGINT) after 312 of 1024 requests. Partial results:"
    )
    arms: dict[str, dict[str, Any]] = {"round_robin": {"stopped": None}, "kv": cut}
    assert stopped_line(SIGINT, arms, ["round_robin", "kv", "random"]) == (
        "stopped by Ctrl-C (SIGINT) during arm 2/3 kv: round_robin ran to the end; "
        "kv stopped after 312 of 1024 requests; not run: random. Partial results:"
    )
    warm = Interruption("SIGTERM", 143, "kv: warm-up")
    assert stopped_line(warm, {}) == (
        "stopped by SIGTERM during kv: warm-up, before any measured request ended: no results"
    )
    assert "the results are complete" in stopped_line(single, {"kv": {"stopped": None}})
