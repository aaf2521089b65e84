"""Stopping a load test: what ended is kept and reported as partial, nothing more is
sent, and --compare begins no further arm (httpx.MockTransport answers, slowly)."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest

from dyn.bench.load import Plan, Server, Target, compare, run_arm, run_requests
from dyn.bench.stats import RequestResult
from dyn.bench.workloads import Message, WorkItem

pytestmark = pytest.mark.anyio

DONE = b'data: {"choices": [{"index": 0, "text": "a"}]}\n\ndata: [DONE]\n\n'


class SlowServer:
    """Each completion takes ``delay_s``; /admin/route switches, /metrics counts."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.sent = 0
        self.strategy = "kv"
        self.switches: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/admin/route":
            if request.method == "POST":
                self.strategy = json.loads(request.content)["strategy"]
                self.switches.append(self.strategy)
            return httpx.Response(200, json={"strategy": self.strategy})
        if path == "/admin/kv/clear":
            return httpx.Response(200, json={"cleared_blocks": 0, "workers": 1})
        if path == "/metrics":
            return httpx.Response(200, text="")
        if path == "/v1/models":  # dyn bench checks --model against it
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        self.sent += 1
        await anyio.sleep(self.delay_s)
        return httpx.Response(200, content=DONE)


def _items(n: int) -> list[WorkItem]:
    return [WorkItem(i, (Message("user", "q"),), 1, 1, group=0) for i in range(n)]


def _server(fake: SlowServer) -> Server:
    return Server(Target("http://test", model="m"), transport=httpx.MockTransport(fake))


class StopAfter:
    """A progress sink that sets ``stop`` once ``count`` measured requests ended."""

    def __init__(self, stop: anyio.Event, count: int) -> None:
        self.stop, self.count, self.ended = stop, count, 0
        self.labels: list[str] = []

    def start(self, label: str, total: int) -> None:
        self.labels.append(label)

    def done(self, result: RequestResult) -> None:
        self.ended += 1
        if self.ended == self.count:
            self.stop.set()


async def test_run_requests_stops_sending_and_keeps_what_ended() -> None:
    fake, stop = SlowServer(0.05), anyio.Event()
    sink = StopAfter(stop, 3)
    async with _server(fake) as server:
        with anyio.fail_after(5):
            results, _ = await run_requests(server, _items(20), 1, sink.done, stop)
    assert [r.index for r in results] == [0, 1, 2]
    assert all(r.ok for r in results)
    assert fake.sent <= 4  # the one in flight when stop came is abandoned


async def test_run_arm_reports_how_many_of_how_many() -> None:
    fake, stop = SlowServer(0.02), anyio.Event()
    async with _server(fake) as server:
        arm = await run_arm(
            server, Plan(_items(10), max_concurrency=1), StopAfter(stop, 4), "kv", stop=stop
        )
    assert arm is not None
    assert arm["stopped"] == {"requests_done": 4, "requests_planned": 10}
    assert arm["completed"] == 4
    assert len(arm["ttfts"]) == 4


async def test_compare_begins_no_arm_after_a_stop_and_restores_the_strategy() -> None:
    fake, stop = SlowServer(0.02), anyio.Event()
    plan = Plan(_items(6), max_concurrency=1)
    async with _server(fake) as server:
        arms = await compare(server, plan, ["round_robin", "random"], StopAfter(stop, 2), stop=stop)
    assert list(arms) == ["round_robin"]
    assert arms["round_robin"]["stopped"] == {"requests_done": 2, "requests_planned": 6}
    assert fake.switches == ["round_robin", "kv"]  # random never began; kv is back
