"""The load generator against canned HTTP answers (httpx.MockTransport), and the CLI's
argument checks; tests/e2e/test_bench_live.py drives a real graph."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from dyn.bench.load import Plan, Server, Target, compare, run_requests
from dyn.bench.stats import RequestResult
from dyn.bench.workloads import Message, WorkItem
from dyn.cli.app import app
from dyn.errors import DynError

pytestmark = pytest.mark.anyio


def _sse(*events: Any) -> bytes:
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"


def _chunk(text: str) -> dict[str, Any]:
    return {"object": "text_completion", "choices": [{"index": 0, "text": text}]}


USAGE = {
    "choices": [],
    "usage": {
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 4},
    },
}


class FakeServer:
    """Answers by prompt: "ok", "busy" (429), "broken" (error mid-stream)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.strategy = "kv"
        self.switches: list[str] = []
        self.clears = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m1"}, {"id": "m2"}]})
        if path == "/admin/route":
            if request.method == "POST":
                self.strategy = json.loads(request.content)["strategy"]
                self.switches.append(self.strategy)
            return httpx.Response(200, json={"strategy": self.strategy})
        if path == "/admin/kv/clear":
            self.clears += 1
            return httpx.Response(200, json={"cleared_blocks": 0, "workers": 1})
        if path == "/metrics":
            n = len(self.bodies)
            return httpx.Response(200, text=f'dyn_router_decisions_total{{worker="w"}} {n}\n')
        body = json.loads(request.content)
        self.bodies.append(body)
        prompt = body.get("prompt") or body["messages"][-1]["content"]
        if prompt.endswith("busy"):
            return httpx.Response(429, json={"error": {"message": "queue full"}})
        if prompt.endswith("broken"):
            return httpx.Response(200, content=_sse(_chunk("a"), {"error": {"message": "boom"}}))
        return httpx.Response(200, content=_sse(_chunk("a"), _chunk("b"), _chunk("c"), USAGE))


def _item(index: int, prompt: str, after: int | None = None) -> WorkItem:
    messages = (Message("system", "sys"), Message("user", prompt))
    return WorkItem(index, messages, input_len=2, output_len=3, group=0, after=after)


def _server(fake: FakeServer, **target: Any) -> Server:
    return Server(Target("http://test", **target), transport=httpx.MockTransport(fake))


async def test_send_measures_a_stream_and_reads_usage() -> None:
    fake = FakeServer()
    async with _server(fake) as server:
        assert server.model == "m1"
        result = await server.send(_item(0, "ok"), epoch=0.0)
    assert result.ok
    assert result.status == 200
    assert result.error == ""
    assert (result.input_len, result.output_len, result.cached_tokens) == (7, 3, 4)
    assert len(result.itls_s) == 2
    assert 0 < result.ttft_s <= result.e2el_s
    body = fake.bodies[0]
    assert body["prompt"] == "sysok"
    assert body["max_tokens"] == 3
    assert body["ignore_eos"] is True
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_chat_requests_and_no_ignore_eos() -> None:
    fake = FakeServer()
    async with _server(fake, api="chat", model="m2", ignore_eos=False) as server:
        await server.send(_item(0, "ok"), epoch=0.0)
    body = fake.bodies[0]
    assert body["model"] == "m2"
    assert "ignore_eos" not in body
    assert body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "ok"},
    ]
    assert body["max_completion_tokens"] == 3


async def test_failures_are_results_not_exceptions() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with _server(FakeServer()) as server:
        busy = await server.send(_item(0, "busy"), epoch=0.0)
        broken = await server.send(_item(1, "broken"), epoch=0.0)
    assert (busy.ok, busy.error_kind, busy.error) == (False, "429", "HTTP 429: queue full")
    assert (broken.ok, broken.error_kind, broken.error) == (False, "stream", "stream error: boom")
    async with Server(Target("http://x", model="m"), transport=httpx.MockTransport(refuse)) as s:
        down = await s.send(_item(0, "ok"), epoch=0.0)
    assert down.error_kind == "connection"
    assert "refused" in down.error


async def test_a_model_the_server_does_not_list_is_refused_before_any_request() -> None:
    fake = FakeServer()
    with pytest.raises(DynError, match=r"model 'nope' is not served .* lists m1, m2"):
        async with _server(fake, model="nope"):
            pass
    assert fake.bodies == []
    async with _server(fake, model="m2") as server:
        assert server.model == "m2"


async def test_run_requests_keeps_order_and_waits_for_the_previous_turn() -> None:
    fake = FakeServer()
    items = [_item(0, "ok"), _item(1, "ok", after=0), _item(2, "busy"), _item(3, "ok", after=9)]
    seen: list[RequestResult] = []
    async with _server(fake) as server:
        results, duration = await run_requests(server, items, 2, seen.append)
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert [r.ok for r in results] == [True, True, False, True]
    assert len(seen) == 4
    assert duration > 0
    assert results[1].start_s >= results[0].start_s + results[0].e2el_s


class Quiet:
    def start(self, label: str, total: int) -> None:
        pass

    def done(self, result: RequestResult) -> None:
        pass


async def test_compare_switches_clears_and_restores() -> None:
    fake = FakeServer()
    plan = Plan([_item(0, "ok"), _item(1, "ok")], warmup=[_item(0, "ok")], max_concurrency=1)
    async with _server(fake) as server:
        arms = await compare(server, plan, ["round_robin", "random"], Quiet())
    assert list(arms) == ["round_robin", "random"]
    assert fake.switches == ["round_robin", "random", "kv"]
    assert fake.clears == 2
    for arm in arms.values():
        assert arm["completed"] == 2
        # Warm-up requests fall before the first scrape: only the measured two count.
        assert arm["server_metrics_delta"]["dyn_router_decisions_total"] == 2
        assert arm["worker_request_share"] == {"w": 1.0}


def test_cli_rejects_bad_arguments() -> None:
    runner = CliRunner()
    cases = [
        (["--api", "soap"], "unknown --api 'soap'; available: completions, chat"),
        (["--metric-percentiles", "x"], "--metric-percentiles takes numbers"),
        (["--percentile-metrics", "ttft,foo"], "unknown --percentile-metrics ['foo']"),
        (["--compare", "kv,kv"], "--compare takes distinct strategy names"),
        (["--workload", "trace:x", "--request-rate", "2"], "use --trace-speedup"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["bench", "--url", "http://127.0.0.1:9", *args])
        assert result.exit_code == 1, result.output
        assert message in result.output


def test_cli_unreachable_server_is_one_line() -> None:
    result = CliRunner().invoke(
        app, ["bench", "--url", "http://127.0.0.1:9", "--groups", "1", "--prompts-per-group", "1"]
    )
    assert result.exit_code == 1
    assert "cannot reach http://127.0.0.1:9/v1/models" in result.output


def test_cli_subcommands_still_run() -> None:
    result = CliRunner().invoke(app, ["bench", "router", "--help"])
    assert result.exit_code == 0
    assert "find_matches" in result.output
    result = CliRunner().invoke(app, ["bench", "--help"])
    assert result.exit_code == 0
    assert "transport" in result.output
    assert "--compare" in result.output
