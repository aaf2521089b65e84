"""`dyn bench --sim`: virtual-time replay through the real router and mocker core."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dyn.bench.sim import SimRequest, SimRun, Simulator
from dyn.bench.sim_run import (
    BlockTokens,
    SimSetup,
    parse_timing,
    sim_setup,
    simulate,
    text_requests,
    trace_requests,
)
from dyn.bench.workloads import (
    MultiTurn,
    SharedPrefix,
    TraceRecord,
    Words,
    multi_turn,
    shared_prefix,
    with_arrivals,
)
from dyn.cli.app import app
from dyn.engines.base import EngineRequest
from dyn.engines.mocker import MockerConfig, MockerCore
from dyn.errors import DynError
from dyn.routing.kv.router import KvRouter
from dyn.routing.simple import RoundRobin
from dyn.tokenizer import load_tokenizer

TRACES = Path(__file__).resolve().parents[1] / "data"
SYNTHETIC = TRACES / "mooncake_synthetic_trace.jsonl"
CONVERSATION = TRACES / "mooncake_conversation_trace.jsonl"
ROOT = Path(__file__).resolve().parents[2]
SMALL = SharedPrefix(groups=6, prompts_per_group=4, system_prompt_len=96, question_len=16)
VLLM_KEYS = [
    "duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
    "request_throughput", "output_throughput",
    *[f"{s}_{m}_ms" for s in ("mean", "median", "std", "p50", "p90", "p99")
      for m in ("ttft", "tpot", "itl", "e2el")],
]  # fmt: skip
DYN_KEYS = ["prefix_hit_rate", "worker_request_share", "errors_by_status", "server_metrics_delta"]
ARRAYS = ["ttfts", "itls", "e2els", "input_lens", "output_lens", "cached_tokens", "errors"]


@pytest.fixture(scope="module")
def words() -> Words:
    return Words(load_tokenizer(None))


def small_config(**fields: Any) -> MockerConfig:
    return MockerConfig(block_size=16, num_gpu_blocks=256, **fields)


def outcome(run: SimRun) -> list[tuple[Any, ...]]:
    """Everything a run measured, request by request."""
    return [
        (r.ok, r.start_s, r.ttft_s, r.e2el_s, r.itls_s, r.output_len, r.cached_tokens, w)
        for r, w in zip(run.results, run.workers, strict=True)
    ]


# -- the core's decode runs ---------------------------------------------------------------


def drive(config: MockerConfig, seed: int, skip: bool) -> tuple[list[Any], list[Any]]:
    """Random arrivals into one core, stepped one at a time or run ahead between them."""
    rng = random.Random(seed)
    core = MockerCore(config)
    arrivals = sorted(
        (rng.uniform(0, 2), f"r{i}", [rng.randrange(40) for _ in range(rng.randrange(1, 60))])
        for i in range(12)
    )
    tokens: list[Any] = []
    events: list[Any] = []
    now = 0.0
    while arrivals or core.has_work():
        if not core.has_work():
            now = max(now, arrivals[0][0])
        while arrivals and arrivals[0][0] <= now:
            _, request_id, prompt = arrivals.pop(0)
            request = EngineRequest(request_id=request_id, tokens=prompt, max_tokens=40)
            core.add(request, now)
        following = arrivals[0][0] if arrivals else math.inf
        run = core.decode_steps(now, following) if skip else None
        if run is not None and run.durations:
            for step, duration in enumerate(run.durations):
                now += duration
                tokens += [(now, rid, toks[step]) for rid, toks in run.tokens.items()]
            events += run.events
        else:
            result = core.step(now)
            now += result.duration_s
            tokens += [(now, rid, out.tokens[0]) for rid, out in result.outputs]
            events += result.events
        core.check()
    return sorted(tokens), events


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("blocks", [40, 256])  # 40: eviction and preemption happen
def test_decode_runs_do_exactly_what_single_steps_do(seed: int, blocks: int) -> None:
    config = MockerConfig(block_size=4, num_gpu_blocks=blocks, max_num_seqs=4)
    assert drive(config, seed, skip=True) == drive(config, seed, skip=False)


# -- the simulator ------------------------------------------------------------------------


def test_skipping_ahead_changes_nothing_on_a_trace() -> None:
    requests = trace_requests(SYNTHETIC, seed=0, speedup=4.0, limit=150)
    config = MockerConfig(num_gpu_blocks=2048)
    runs = [
        Simulator(config, 4, KvRouter(None, seed=1), skip_ahead=skip).run(requests)
        for skip in (True, False)
    ]
    assert outcome(runs[0]) == outcome(runs[1])
    assert runs[0].steps == runs[1].steps


@pytest.mark.parametrize("workload", ["shared-prefix", "multi-turn"])
def test_skipping_ahead_changes_nothing_in_a_closed_loop(workload: str, words: Words) -> None:
    tokenizer = load_tokenizer(None)
    if workload == "shared-prefix":
        items = with_arrivals(shared_prefix(SMALL, words, 3), 40.0, 3)
    else:
        items = multi_turn(MultiTurn(sessions=6, turns=3, question_len=24, output_len=20), words, 3)
    requests = text_requests(items, tokenizer)
    runs = [
        Simulator(small_config(), 3, KvRouter(None, seed=1), max_concurrency=5, skip_ahead=s).run(
            requests
        )
        for s in (True, False)
    ]
    assert outcome(runs[0]) == outcome(runs[1])


def test_turns_wait_for_the_previous_turn(words: Words) -> None:
    items = multi_turn(MultiTurn(sessions=3, turns=3, question_len=8, output_len=5), words, 0)
    run = Simulator(small_config(), 2, RoundRobin()).run(text_requests(items, load_tokenizer(None)))
    for item, result in zip(items, run.results, strict=True):
        if item.after is not None:
            previous = run.results[item.after]
            assert result.start_s >= previous.start_s + previous.e2el_s
    assert all(r.ok and r.output_len == 5 for r in run.results)


def test_concurrency_cap_holds(words: Words) -> None:
    requests = text_requests(shared_prefix(SMALL, words, 1), load_tokenizer(None))
    run = Simulator(small_config(), 2, RoundRobin(), max_concurrency=3).run(requests)
    spans = [(r.start_s, r.start_s + r.e2el_s) for r in run.results]
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 3


def test_a_request_larger_than_the_cache_fails_alone() -> None:
    big = SimRequest(0, 10_000, 4, lambda: list(range(10_000)))
    small = SimRequest(1, 10, 4, lambda: list(range(10)))
    run = Simulator(small_config(), 2, RoundRobin()).run([big, small])
    assert not run.results[0].ok
    assert run.results[0].status == 400
    assert run.results[1].ok
    assert run.results[1].output_len == 4


def test_the_same_seed_gives_the_same_result(words: Words) -> None:
    setup = SimSetup(mocker=small_config(), workers=3)
    items = with_arrivals(shared_prefix(SMALL, words, 5), 30.0, 5)
    requests = text_requests(items, load_tokenizer(None))

    def result(seed: int) -> dict[str, Any]:
        out = simulate(requests, setup, "kv", seed=seed)
        del out["sim"]["wall_s"]
        return out

    assert result(4) == result(4)
    assert result(4)["request_workers"] != result(5)["request_workers"]  # ties drawn anew


def test_kv_spreads_the_conversation_trace() -> None:
    """Every request of this trace shares block 0 (docs/kv-routing.md): 8 workers of the
    default settings (block size 64, 16,384 blocks) replay its first 2,000 requests."""
    requests = trace_requests(CONVERSATION, seed=0, limit=2000)
    result = simulate(requests, SimSetup(workers=8), "kv")
    assert result["completed"] == 2000
    share = result["worker_request_share"]
    assert len(share) == 8
    assert max(share.values()) <= 1.5 / 8, share
    assert result["prefix_hit_rate"] > 0.2


# -- setup and workloads ------------------------------------------------------------------


def test_block_tokens_follow_hash_ids() -> None:
    blocks = BlockTokens(seed=0)
    a = TraceRecord(1, 0.0, 1100, 1, (7, 8, 9))
    b = TraceRecord(2, 0.0, 700, 1, (7, 5))
    first, second = blocks.prompt(a), blocks.prompt(b)
    assert len(first) == 1100
    assert len(second) == 700
    assert first[:512] == second[:512]
    assert first[512:700] != second[512:700]
    assert BlockTokens(seed=0).prompt(a) == first
    assert BlockTokens(seed=1).prompt(a) != first
    padded = blocks.prompt(TraceRecord(3, 0.0, 600, 1, (7,)))
    assert len(padded) == 600
    assert padded[:512] == first[:512]


def test_trace_requests_keep_the_trace_schedule() -> None:
    requests = trace_requests(SYNTHETIC, seed=0, speedup=2.0, limit=20)
    lines = [json.loads(line) for line in SYNTHETIC.read_text().splitlines()[:20]]
    assert [r.input_len for r in requests] == [line["input_length"] for line in lines]
    assert [r.arrival_s for r in requests] == [line["timestamp"] / 2000 for line in lines]
    assert len(requests[0].tokens()) == lines[0]["input_length"]


def test_settings_come_from_the_graph_then_the_flags() -> None:
    setup, tokenizer = sim_setup(ROOT / "graphs" / "kv_routing.yaml", mocker={"block_size": 32})
    assert setup.workers == 4
    assert setup.strategy == "kv"
    assert setup.max_model_len == 8096
    assert setup.mocker.block_size == 32
    assert setup.mocker.num_gpu_blocks == 512
    assert setup.mocker.vocab_size == tokenizer.vocab_size
    assert sim_setup(None, workers=2)[0].workers == 2
    with pytest.raises(DynError, match="invalid worker settings"):
        sim_setup(None, mocker={"max_num_seqs": 0})


def test_timing_flag() -> None:
    assert parse_timing("polynomial") == "polynomial"
    fixed = parse_timing("fixed:1.5,0")
    assert not isinstance(fixed, str)
    assert fixed.fixed.prefill_ms == 1.5
    for bad in ("fixed:1", "fixed:a,b", "fixed:-1,0", "linear"):
        with pytest.raises(DynError, match="--timing"):
            parse_timing(bad)


# -- the command --------------------------------------------------------------------------

runner = CliRunner()
WORKLOAD = [
    "--workload", "shared-prefix", "--groups", "4", "--prompts-per-group", "4",
    "--system-prompt-len", "64", "--question-len", "16", "--output-len", "8",
    "--max-concurrency", "4", "--warmup", "2",
]  # fmt: skip


def test_sim_compare_saves_one_result_per_strategy(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = ["bench", "--sim", *WORKLOAD, "--workers", "3", "--block-size", "16"]
    args += ["--compare", "round_robin,kv", "--save-result", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "(×" in result.output
    assert "Prefix cache hit rate" in result.output
    arms = json.loads(out.read_text())
    assert list(arms) == ["round_robin", "kv"]
    for name, arm in arms.items():
        assert arm["strategy"] == name
        for key in VLLM_KEYS + DYN_KEYS + ARRAYS:
            assert key in arm, key
        assert arm["completed"] == 16
        assert arm["failed"] == 0
        assert sum(arm["output_lens"]) == arm["total_output_tokens"] == 16 * 8
        assert sum(arm["input_lens"]) == arm["total_input_tokens"] == 16 * 80
        assert sum(arm["worker_request_share"].values()) == pytest.approx(1.0)
        assert Counter(arm["request_workers"]).keys() <= {"sim-0", "sim-1", "sim-2"}
        delta = arm["server_metrics_delta"]
        assert delta["dyn_router_decisions_total"] == 16  # the warm-up is not counted
        assert delta["dyn_cached_prompt_tokens_total"] == sum(arm["cached_tokens"])
        assert arm["sim"]["workers"] == 3
        assert arm["sim"]["mocker"]["block_size"] == 16


def test_sim_takes_the_graph(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    graph = str(ROOT / "graphs" / "kv_routing.yaml")
    args = ["bench", "--sim", *WORKLOAD, "--graph", graph, "--timing", "fixed:0,0"]
    result = runner.invoke(app, [*args, "--save-result", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["strategy"] == "kv"
    assert saved["sim"]["workers"] == 4
    assert saved["duration"] == 0.0  # zero-time steps: virtual time never moves
    assert saved["sim"]["mocker"]["timing"] == {"fixed": {"prefill_ms": 0.0, "decode_ms": 0.0}}


def test_sim_burst_sends_everything_at_once_with_skewed_groups(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    at = WORKLOAD.index("--max-concurrency")
    shape = WORKLOAD[:at] + WORKLOAD[at + 2 :]
    args = ["bench", "--sim", *shape, "--workers", "2", "--burst", "--zipf", "1.2"]
    result = runner.invoke(app, [*args, "--save-result", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert (saved["burst"], saved["zipf"], saved["max_concurrency"]) == (True, 1.2, None)
    assert saved["completed"] == 16
    # All 16 arrive at t=0 and none waits for a slot: the first token of the last one
    # comes no sooner than the first one's.
    assert max(saved["ttfts"]) > min(saved["ttfts"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--burst", "--max-concurrency", "8"], "takes no --max-concurrency"),
        (["--burst", "--request-rate", "5"], "does not go with --request-rate"),
        (["--sim", "--workload", "multi-turn", "--zipf", "1"], "--zipf skews shared-prefix"),
        (["--block-size", "16"], "only apply with --sim"),
        (["--sim", "--url", "http://x"], "drop --url"),
        (["--sim", "--timing", "fixed:1"], "--timing takes"),
        (["--sim", "--graph", "missing.yaml"], "missing.yaml"),
    ],
)
def test_sim_flag_errors_are_one_line(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code != 0
    assert message in result.output


def test_simulated_and_fresh_replays_agree(words: Words) -> None:
    """A warm-up then the measured run on one simulator is what simulate() reports."""
    requests = text_requests(shared_prefix(SMALL, words, 2), load_tokenizer(None))
    setup = SimSetup(mocker=small_config(), workers=2)
    result = simulate(requests, setup, "round_robin", warmup=requests[:3])
    simulator = Simulator(setup.mocker, 2, RoundRobin(None, seed=0))
    simulator.run([replace(r, arrival_s=None) for r in requests[:3]])
    run = simulator.run(requests)
    assert result["ttfts"] == [r.ttft_s for r in run.results]
