"""The mocker core in virtual time: timing, batching, preemption, caching, determinism."""

from __future__ import annotations

import pytest
from test_mocker_support import FAST, config, drain, events_of, request, tokens_of

from dyn.engines.mocker import MockerCore
from dyn.engines.mocker.timing import decode_ms, prefill_ms
from dyn.errors import BadRequestError
from dyn.kv.events import KvCleared, KvRemoved, KvStored
from dyn.kv.hashing import local_block_hashes, sequence_hashes


def test_decode_time_follows_the_batch_context() -> None:
    core = MockerCore(config(block_size=16, num_gpu_blocks=1024))
    capacity = 1024 * 16
    core.add(request("a", list(range(1000)), 50), 0.0)
    first = core.step(0.0)
    assert first.duration_s == pytest.approx(prefill_ms(1000) / 1000)
    assert [rid for rid, _ in first.outputs] == ["a"]
    alone = [core.step(0.0).duration_s for _ in range(3)]
    # A's context is 1001, 1002, 1003 tokens at those steps.
    assert alone == pytest.approx([decode_ms(1001 + k, capacity) / 1000 for k in range(3)])
    core.add(request("b", list(range(5000, 9000)), 50), 0.0)
    joined = core.step(0.0)  # B's prefill plus A's decode, summed
    assert joined.duration_s == pytest.approx((prefill_ms(4000) + decode_ms(1004, capacity)) / 1000)
    together = core.step(0.0).duration_s
    assert together == pytest.approx(decode_ms(1005 + 4001, capacity) / 1000)
    assert together > alone[-1]


def test_speedup_ratio_divides_and_fixed_timing_counts_phases() -> None:
    fast = MockerCore(config(speedup_ratio=10.0))
    fast.add(request("a", [1] * 100, 2), 0.0)
    assert fast.step(0.0).duration_s == pytest.approx(prefill_ms(100) / 10_000)
    fixed = MockerCore(config(timing={"fixed": {"prefill_ms": 7, "decode_ms": 3}}))
    fixed.add(request("a", [1] * 100, 3), 0.0)
    assert fixed.step(0.0).duration_s == pytest.approx(0.007)
    fixed.add(request("b", [2] * 100, 3), 0.0)
    assert fixed.step(0.0).duration_s == pytest.approx(0.010)
    assert fixed.step(0.0).duration_s == pytest.approx(0.003)


@pytest.mark.parametrize("caching", [True, False])
def test_preemption_completes_every_request_without_repeats(caching: bool) -> None:
    small = config(
        block_size=4, num_gpu_blocks=24, watermark=0.0, max_num_seqs=8,
        enable_prefix_caching=caching, **FAST,
    )  # fmt: skip
    prompts = {f"r{k}": [k * 100 + t for t in range(10)] for k in range(8)}
    core = MockerCore(small)
    for request_id, prompt in prompts.items():
        core.add(request(request_id, prompt, 40), 0.0)
    outputs, _, _ = drain(core)
    assert core.preemptions_total > 0
    for request_id, prompt in prompts.items():
        alone = MockerCore(config(**FAST))
        alone.add(request(request_id, prompt, 40), 0.0)
        expected = tokens_of(drain(alone)[0][request_id])
        assert tokens_of(outputs[request_id]) == expected  # nothing repeated or skipped
        assert [o.finish_reason for o in outputs[request_id]] == [None] * 39 + ["length"]
    assert core.load().active_blocks == 0


def test_prefix_reuse_reports_cached_tokens_and_chains_events() -> None:
    core = MockerCore(config(block_size=16, **FAST))
    prefix = list(range(64))
    first, second = prefix + [1000] * 10, prefix + [2000] * 10
    core.add(request("a", first, 3), 0.0)
    step = core.step(0.0)
    assert step.outputs[0][1].cached_tokens == 0
    expected = sequence_hashes(local_block_hashes(first, 16))
    stored = step.events[0].data
    assert isinstance(stored, KvStored)
    assert stored.parent_hash is None
    assert [b.block_hash for b in stored.blocks] == expected
    assert [b.tokens_hash for b in stored.blocks] == local_block_hashes(first, 16)
    core.add(request("b", second, 3), 0.0)
    outputs, steps, _ = drain(core)
    assert outputs["b"][0].cached_tokens == 64
    assert [o.cached_tokens for o in outputs["b"][1:]] == [0, 0]
    assert core.load().prefix_hit_rate == pytest.approx(64 / 148)
    ids = [e.event_id for e in [*step.events, *events_of(steps)]]
    assert ids == list(range(1, len(ids) + 1))


def test_generated_blocks_are_published_with_their_parent() -> None:
    core = MockerCore(config(block_size=4, **FAST))
    core.add(request("a", [5, 6, 7, 8, 9, 10], 10), 0.0)
    outputs, steps, _ = drain(core)
    context = [5, 6, 7, 8, 9, 10, *tokens_of(outputs["a"])]
    hashes = sequence_hashes(local_block_hashes(context, 4))  # 16 tokens: 4 full blocks
    published: list[int] = []
    for event in events_of(steps):
        assert isinstance(event.data, KvStored)
        assert event.data.parent_hash == (published[-1] if published else None)
        published.extend(b.block_hash for b in event.data.blocks)
    assert published == hashes


def test_eviction_is_lru_and_emits_removed() -> None:
    core = MockerCore(config(block_size=4, num_gpu_blocks=7, watermark=0.0, **FAST))
    core.add(request("a", list(range(16)), 1), 0.0)  # 4 full blocks + the token's slot
    _, steps, _ = drain(core)
    old = sequence_hashes(local_block_hashes(list(range(16)), 4))
    core.add(request("b", list(range(100, 116)), 1), 0.0)
    _, steps, _ = drain(core)
    removed = [e.data for e in events_of(steps) if isinstance(e.data, KvRemoved)]
    # B needs 5 slots, 3 are free: A's two newest (deepest) blocks go first.
    assert [h for r in removed for h in r.block_hashes] == [old[3], old[2]]
    core.add(request("c", list(range(16)), 1), 0.0)
    outputs, _, _ = drain(core)
    assert outputs["c"][0].cached_tokens == 8  # A's first two blocks survived


def test_continuation_is_deterministic_and_seeded() -> None:
    prompt = list(range(40, 90))
    core = MockerCore(config(**FAST))
    core.add(request("a", prompt, 20), 0.0)
    full = tokens_of(drain(core)[0]["a"])
    elsewhere = MockerCore(config(**FAST))
    elsewhere.add(request("a2", prompt + full[:8], 12), 0.0)
    assert tokens_of(drain(elsewhere)[0]["a2"]) == full[8:]
    reseeded = MockerCore(config(seed=1, **FAST))
    reseeded.add(request("a", prompt, 20), 0.0)
    assert tokens_of(drain(reseeded)[0]["a"]) != full
    assert all(0 <= t < 32000 for t in full)


def test_chunked_prefill_spreads_a_long_prompt_over_steps() -> None:
    core = MockerCore(config(**FAST))
    core.add(request("long", [7] * 20_000, 2), 0.0)
    steps = [core.step(0.0) for _ in range(3)]
    assert [s.prefill_tokens for s in steps] == [8192, 8192, 20_000 - 2 * 8192]
    assert [len(s.outputs) for s in steps] == [0, 0, 1]
    unchunked = MockerCore(config(enable_chunked_prefill=False, **FAST))
    unchunked.add(request("long", [7] * 20_000, 2), 0.0)
    unchunked.add(request("next", [8] * 100, 2), 0.0)
    step = unchunked.step(0.0)  # an oversized prompt runs alone
    assert step.prefill_tokens == 20_000
    assert [r for r, _ in step.outputs] == ["long"]


def test_admission_respects_max_num_seqs_and_watermark() -> None:
    core = MockerCore(config(max_num_seqs=2, max_num_batched_tokens=64, **FAST))
    for k in range(3):
        core.add(request(f"r{k}", [k] * 10, 5), 0.0)
    core.step(0.0)
    assert (core.load().running, core.load().waiting) == (2, 1)
    tight = MockerCore(config(block_size=4, num_gpu_blocks=10, watermark=0.2, **FAST))
    tight.add(request("a", list(range(20)), 2), 0.0)  # 6 blocks of the 8 admissible
    tight.add(request("b", list(range(50, 58)), 2), 0.0)  # 3 more would exceed 8
    tight.step(0.0)
    assert (tight.load().running, tight.load().waiting) == (1, 1)
    outputs, _, _ = drain(tight)
    assert sorted(outputs) == ["a", "b"]


def test_end_of_sequence_min_tokens_and_ignore_eos() -> None:
    tiny_vocab = config(vocab_size=2, eos_token_id=1, **FAST)
    core = MockerCore(tiny_vocab)
    core.add(request("stop", [3, 4], 100, ignore_eos=False), 0.0)
    core.add(request("min", [3, 4], 100, ignore_eos=False, min_tokens=20), 0.0)
    core.add(request("ignore", [3, 4], 100, ignore_eos=True), 0.0)
    outputs, _, _ = drain(core)
    stop = tokens_of(outputs["stop"])
    assert outputs["stop"][-1].finish_reason == "stop"
    assert stop[-1] == 1
    assert 1 not in stop[:-1]
    assert len(stop) < 100
    assert 1 not in tokens_of(outputs["min"])[:20]
    assert outputs["min"][-1].finish_reason in {"stop", "length"}
    assert len(outputs["ignore"]) == 100
    assert outputs["ignore"][-1].finish_reason == "length"


def test_cancel_frees_blocks_at_once() -> None:
    core = MockerCore(config(block_size=4, **FAST))
    core.add(request("a", list(range(30)), 50), 0.0)
    core.add(request("b", list(range(30)), 50), 0.0)
    core.step(0.0)
    core.add(request("c", [1, 2, 3], 5), 0.0)
    assert core.load().active_blocks > 0
    assert core.cancel("a")
    assert core.cancel("b")
    assert core.cancel("c")
    assert not core.cancel("a")
    assert not core.cancel("unknown")
    core.check()
    assert core.load().active_blocks == 0
    assert not core.has_work()


def test_snapshot_and_clear() -> None:
    core = MockerCore(config(block_size=4, **FAST))
    core.add(request("a", list(range(12)), 1), 0.0)
    core.add(request("b", [*range(8), 50, 51, 52, 53], 1), 0.0)
    _, steps, _ = drain(core)
    last = events_of(steps)[-1].event_id
    snapshot = core.snapshot()
    assert isinstance(snapshot[0].data, KvCleared)
    assert {e.event_id for e in snapshot} == {last}
    seen: set[int | None] = {None}
    for event in snapshot[1:]:
        assert isinstance(event.data, KvStored)
        assert event.data.parent_hash in seen
        seen.update(b.block_hash for b in event.data.blocks)
    assert len(seen) - 1 == 4  # 2 shared + 1 each
    cleared = core.clear()
    assert [(e.event_id, e.data) for e in cleared] == [(last + 1, KvCleared())]
    assert len(core.snapshot()) == 1
    core.add(request("c", list(range(12)), 1), 0.0)
    assert drain(core)[0]["c"][0].cached_tokens == 0


def test_requests_that_cannot_run_are_refused() -> None:
    core = MockerCore(config(block_size=4, num_gpu_blocks=10, watermark=0.0))
    with pytest.raises(BadRequestError, match=r"needs 11 KV blocks .* at most 10"):
        core.add(request("big", [1] * 40, 4), 0.0)
    with pytest.raises(BadRequestError, match="max_tokens must be at least 1"):
        core.add(request("none", [1], 0), 0.0)
    core.add(request("a", [1], 1), 0.0)
    with pytest.raises(BadRequestError, match="already running"):
        core.add(request("a", [1], 1), 0.0)
