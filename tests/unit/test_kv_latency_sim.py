"""kv_latency against kv in virtual time: where they decide differently, which does better.

The shared-prefix workload at 8 in flight on 4 workers (2 requests per worker): ``kv``
follows the cache and piles a group's requests onto the worker that holds its prefix,
where every sequence's decode reads the whole prefix again; ``kv_latency`` predicts that
slowdown and spreads them. Both run through the real simulator with the mocker's
polynomial timing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dyn.bench.sim_run import sim_setup, simulate, text_requests
from dyn.bench.workloads import SharedPrefix, Words, shared_prefix
from dyn.tokenizer import load_tokenizer

SHAPE = SharedPrefix(
    groups=16, prompts_per_group=8, system_prompt_len=512, question_len=64, output_len=64
)


def _arm(strategy: str) -> dict[str, Any]:
    setup, tokenizer = sim_setup(None, workers=4, mocker={"block_size": 16, "num_gpu_blocks": 512})
    words = Words(load_tokenizer(None))
    requests = text_requests(shared_prefix(SHAPE, words, seed=3), tokenizer)
    warm = text_requests(shared_prefix(replace(SHAPE, groups=2), words, seed=4)[:8], tokenizer)
    return simulate(
        requests,
        replace(setup, strategy=strategy),
        strategy,
        seed=3,
        warmup=warm,
        max_concurrency=8,
    )


def test_kv_latency_decides_differently_from_kv_and_does_better() -> None:
    kv, latency, round_robin = _arm("kv"), _arm("kv_latency"), _arm("round_robin")
    assert all(arm["completed"] == 128 and not arm["failed"] for arm in (kv, latency))
    differ = sum(
        a != b for a, b in zip(kv["request_workers"], latency["request_workers"], strict=True)
    )
    assert differ >= 16  # not a tie-break here and there: a different policy
    # kv piles groups up: its tail is far behind round-robin's; kv_latency's is not.
    assert kv["p90_e2el_ms"] > 1.2 * round_robin["p90_e2el_ms"]
    assert latency["p90_e2el_ms"] < kv["p90_e2el_ms"]
    assert latency["p90_e2el_ms"] <= 1.05 * round_robin["p90_e2el_ms"]
    assert latency["request_throughput"] > kv["request_throughput"]
