"""graphs/kv_routing.yaml through `dyn up` as a real process, spoken to by real clients.

One graph is started for the module (speedup 20, so the polynomial timing model runs
twenty times faster than real time) and every test talks to it over loopback.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _dyn_graph import dyn_up, free_port, metrics_pages
from _prompts import WORDS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
GRAPH = ROOT / "graphs" / "kv_routing.yaml"
MODEL = "dyn-mock"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("kv_routing") / "up.log"
    # speedup 20: the polynomial timing model, twenty times faster than real time; two
    # front processes (on any machine of two cores or more), so that every test here
    # runs against synced routers behind one port
    with dyn_up(GRAPH, port, log_path, "worker.speedup_ratio=20",
                options=("--front-processes", "2")):  # fmt: skip
        yield f"http://127.0.0.1:{port}"


def prompt(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def test_openai_client_lists_completes_chats_and_streams(base_url: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused")
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]

    completion = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=8)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 8
    assert completion.choices[0].text

    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi!"}], max_tokens=5
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage is not None
    assert chat.usage.completion_tokens == 5

    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-2].choices[0].finish_reason == "length"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text


def test_streamed_sse_bytes_are_exact(base_url: str) -> None:
    """The bytes of a streamed completion, against tokens computed by the engine core
    (the module's graph runs in the default layout)."""
    check_sse_bytes(base_url)


@pytest.mark.parametrize("layout", ["auto", "one-process", "process-per-role"])
def test_streamed_sse_bytes_are_exact_in_every_layout(layout: str, tmp_path: Path) -> None:
    port = free_port()
    with dyn_up(GRAPH, port, tmp_path / "up.log", "worker.speedup_ratio=20",
                options=("--layout", layout)):  # fmt: skip
        check_sse_bytes(f"http://127.0.0.1:{port}")


def check_sse_bytes(base_url: str) -> None:
    from dyn.engines.base import EngineRequest
    from dyn.engines.mocker import MockerConfig, MockerCore
    from dyn.tokenizer import load_tokenizer

    text, max_tokens = "The quick brown fox jumps over the lazy dog.", 4
    body = {
        "model": MODEL,
        "prompt": text,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"x-request-id": "sse-exact-1"}
    raw = httpx.post(f"{base_url}/v1/completions", json=body, headers=headers, timeout=30)
    assert raw.headers["content-type"].startswith("text/event-stream")

    # The same tokens the worker must have produced: the engine is deterministic.
    tokenizer = load_tokenizer(None)
    prompt_ids = tokenizer.encode(text)
    config = MockerConfig(
        block_size=16,
        num_gpu_blocks=512,
        vocab_size=tokenizer.vocab_size,
        eos_token_id=tokenizer.eos_token_id,
    )
    core = MockerCore(config)
    core.add(EngineRequest(request_id="x", tokens=prompt_ids, max_tokens=max_tokens), 0.0)
    produced: list[int] = []
    while core.has_work():
        produced += [t for _, out in core.step(0.0).outputs for t in out.tokens]
    decoder = tokenizer.decode_stream()
    pieces = [decoder.step(token) for token in produced]
    pieces[-1] += decoder.flush()

    created = json.loads(raw.text.split("\n", 1)[0].removeprefix("data: "))["created"]
    cached = int(re.search(r'"cached_tokens":(\d+)', raw.text).group(1))  # type: ignore[union-attr]
    head = f'{{"id":"cmpl-sse-exact-1","object":"text_completion","created":{created},"model":"{MODEL}"'
    expected = ""
    for i, piece in enumerate(pieces):
        finish = '"length"' if i == len(pieces) - 1 else "null"
        choice = (
            f'{{"index":0,"text":{json.dumps(piece)},"logprobs":null,"finish_reason":{finish}}}'
        )
        expected += f'data: {head},"choices":[{choice}],"usage":null}}\n\n'
    usage = (
        f'{{"prompt_tokens":{len(prompt_ids)},"completion_tokens":{max_tokens},'
        f'"total_tokens":{len(prompt_ids) + max_tokens},'
        f'"prompt_tokens_details":{{"cached_tokens":{cached}}}}}'
    )
    expected += f'data: {head},"choices":[],"usage":{usage}}}\n\ndata: [DONE]\n\n'
    assert raw.text == expected


def _hit_rate(base_url: str, strategy: str, seed: int) -> float:
    switched = httpx.post(f"{base_url}/admin/route", json={"strategy": strategy}, timeout=10)
    assert switched.status_code == 200
    assert switched.json()["strategy"] == strategy
    rng = random.Random(seed)
    groups = [prompt(rng, 160) for _ in range(8)]  # ~10 blocks of 16 tokens each
    requests = [f"{groups[g]} {prompt(rng, 12)}" for _ in range(4) for g in range(8)]
    rng.shuffle(requests)  # in file order, round-robin would pin each group by accident
    cached = total = 0
    with httpx.Client(timeout=60) as http:
        for text in requests:
            body = {"model": MODEL, "prompt": text, "max_tokens": 4, "ignore_eos": True}
            usage = http.post(f"{base_url}/v1/completions", json=body).json()["usage"]
            cached += usage["prompt_tokens_details"]["cached_tokens"]
            total += usage["prompt_tokens"]
    return cached / total


def test_kv_beats_round_robin_on_shared_prefixes(base_url: str) -> None:
    # Different seeds, so neither arm finds the other's prefixes in the caches.
    round_robin = _hit_rate(base_url, "round_robin", seed=1)
    kv = _hit_rate(base_url, "kv", seed=2)
    print(f"\nprefix hit rate: round_robin {round_robin:.2f}, kv {kv:.2f}")
    assert kv > round_robin + 0.2


def _decisions(base_url: str) -> dict[str, float]:
    """Routing decisions per worker, summed over every processor of the graph."""
    decisions: dict[str, float] = {}
    for text in metrics_pages(base_url):
        found = re.findall(r'^dyn_router_decisions_total\{worker="([^"]+)"\} (\S+)$', text, re.M)
        for worker, value in found:
            decisions[worker] = decisions.get(worker, 0.0) + float(value)
    return decisions


@pytest.fixture(scope="module")
def one_router_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The graph in one process: one router, which sees every decision at once. Steps
    at a quarter of the module's speed, so that the client's 16 requests at a time are
    in flight together even on a busy machine (a starved client that sends one at a
    time would see the worker holding the shared block take everything, by design)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("kv_routing_one") / "up.log"
    with dyn_up(GRAPH, port, log_path, "worker.speedup_ratio=5",
                options=("--layout", "one-process")):  # fmt: skip
        yield f"http://127.0.0.1:{port}"


def test_kv_spreads_load_when_every_request_shares_its_first_block(one_router_url: str) -> None:
    """The strategy's own spreading rule, so one router: in the auto layout each front
    process routes too, and what one router sent learns the others only a sync later."""
    import concurrent.futures

    base_url = one_router_url
    httpx.post(f"{base_url}/admin/route", json={"strategy": "kv"}, timeout=10)
    rng = random.Random(7)
    shared = prompt(rng, 24)  # at least one full block every request shares
    texts = [f"{shared} {prompt(rng, 40)}" for _ in range(96)]
    before = _decisions(base_url)

    def send(text: str) -> None:
        body = {"model": MODEL, "prompt": text, "max_tokens": 16, "ignore_eos": True}
        assert httpx.post(f"{base_url}/v1/completions", json=body, timeout=60).status_code == 200

    # Under load, as in a trace replay: idle, a worker that cached the shared block is
    # the cheapest by design, so a one-at-a-time client would see it take everything.
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(send, texts))
    after = _decisions(base_url)
    shares = [after[w] - before.get(w, 0.0) for w in after]
    mean = sum(shares) / 4
    print(f"\nrequests per worker: {sorted(shares)}")
    assert len(shares) == 4
    assert max(shares) <= 1.5 * mean


def test_a_strategy_switch_reaches_every_front_process(base_url: str) -> None:
    """The module's graph runs two processors behind one port (on a machine with two
    cores or more): POST /admin/route must switch each, not the one it reached."""
    from dyn.launch.layout import core_count

    if core_count() < 2:
        pytest.skip("one core: the auto layout runs one process, there is nothing to reach")
    switched = httpx.post(f"{base_url}/admin/route", json={"strategy": "least_loaded"}, timeout=10)
    assert switched.status_code == 200, switched.text
    seen: dict[str, str] = {}
    try:
        for _ in range(60):  # a fresh connection each time lands on any front process
            info = httpx.get(f"{base_url}/admin/route", timeout=10).json()
            seen[info["replica_sync"]["router_id"]] = info["strategy"]
            if len(seen) >= 2:
                break
        assert len(seen) >= 2, "every connection reached one front process"
        assert set(seen.values()) == {"least_loaded"}
    finally:
        httpx.post(f"{base_url}/admin/route", json={"strategy": "kv"}, timeout=10)


def test_kv_clear_empties_the_cache_every_front_process_sees(base_url: str) -> None:
    """POST /admin/kv/clear reaches one processor, which clears every worker; the
    workers' events then reach every processor, so each replica's view is empty."""
    from dyn.launch.layout import core_count

    if core_count() < 2:
        pytest.skip("one core: the auto layout runs one process, there is nothing to reach")
    rng = random.Random(11)
    body = {"model": MODEL, "prompt": prompt(rng, 64), "max_tokens": 2}
    for _ in range(4):
        assert httpx.post(f"{base_url}/v1/completions", json=body, timeout=30).status_code == 200
    cleared = httpx.post(f"{base_url}/admin/kv/clear", timeout=10)
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["workers"] == 4
    views: dict[str, int] = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # a fresh connection lands on any front process
        info = httpx.get(f"{base_url}/admin/route", timeout=10).json()
        cached = sum(w.get("cached_blocks") or 0 for w in info["workers"].values())
        views[info["replica_sync"]["router_id"]] = cached
        if len(views) >= 2 and not any(views.values()):
            break
        time.sleep(0.05)
    assert len(views) >= 2, "every connection reached one front process"
    assert views == dict.fromkeys(views, 0), views


def test_route_shows_and_explains(base_url: str) -> None:
    from typer.testing import CliRunner

    from dyn.cli.app import app

    runner = CliRunner()
    shown = runner.invoke(app, ["route", "--url", base_url, "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert len(data["instances"]) == 4
    explained = runner.invoke(
        app, ["route", "--url", base_url, "--explain", "hello " * 40, "--json"]
    )
    assert explained.exit_code == 0, explained.output
    scores = json.loads(explained.stdout)["workers"]
    assert len(scores) == 4
    assert sum(s["chosen"] for s in scores) == 1
    switched = runner.invoke(app, ["route", "--url", base_url, "--strategy", "round-robin"])
    assert switched.exit_code == 0
    assert "round_robin" in switched.stdout
    bad = runner.invoke(app, ["route", "--url", base_url, "--strategy", "kvv"])
    assert bad.exit_code == 1
    assert "unknown strategy 'kvv'" in bad.stderr


def test_explain_shows_kv_latency_terms_per_worker(base_url: str) -> None:
    from typer.testing import CliRunner

    from dyn.cli.app import app

    runner = CliRunner()
    switched = runner.invoke(app, ["route", "--url", base_url, "--strategy", "kv_latency"])
    assert switched.exit_code == 0, switched.output
    try:
        explained = runner.invoke(
            app, ["route", "--url", base_url, "--explain", "hello " * 40, "--json"]
        )
        assert explained.exit_code == 0, explained.output
        scores = json.loads(explained.stdout)["workers"]
        assert len(scores) == 4
        assert sum(s["chosen"] for s in scores) == 1
        for score in scores:
            assert set(score["terms"]) == {"prefill_ms", "decode_ms", "harm_ms"}
            assert score["cost"] == pytest.approx(sum(score["terms"].values()))
        table = runner.invoke(
            app, ["route", "--url", base_url, "--explain", "hello " * 40], env={"COLUMNS": "160"}
        )
        assert table.exit_code == 0, table.output
        for header in ("overlap blocks", "prefill (ms)", "decode (ms)", "harm (ms)", "cost (ms)"):
            assert header in table.stdout, table.stdout
        args = ["route", "--url", base_url, "--explain", "hello " * 40, "--max-tokens", "8"]
        short = runner.invoke(app, [*args, "--json"])
        assert short.exit_code == 0, short.output
        short_scores = json.loads(short.stdout)["workers"]
        # Eight output tokens to come decode for less time than the default assumption.
        assert short_scores[0]["terms"]["decode_ms"] < scores[0]["terms"]["decode_ms"]
    finally:
        runner.invoke(app, ["route", "--url", base_url, "--strategy", "kv"])
