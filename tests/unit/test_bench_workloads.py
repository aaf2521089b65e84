"""Workload generators: deterministic, exact token counts, shared prefixes, trace replay."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import pytest

from dyn.bench.workloads import (
    MOONCAKE_BLOCK_TOKENS,
    MultiTurn,
    SharedPrefix,
    Words,
    make_workload,
    multi_turn,
    poisson_arrivals,
    read_trace,
    shared_prefix,
    with_arrivals,
)
from dyn.errors import DynError
from dyn.tokenizer import WordTokenizer, load_tokenizer

TRACE = Path(__file__).resolve().parents[1] / "data" / "mooncake_synthetic_trace.jsonl"
SMALL = SharedPrefix(groups=4, prompts_per_group=3, system_prompt_len=40, question_len=8)


@pytest.fixture(scope="module")
def tokenizer() -> WordTokenizer:
    tok = load_tokenizer(None)
    assert isinstance(tok, WordTokenizer)
    return tok


@pytest.fixture(scope="module")
def words(tokenizer: WordTokenizer) -> Words:
    return Words(tokenizer)


def test_words_give_exact_token_counts(words: Words, tokenizer: WordTokenizer) -> None:
    import random

    rng = random.Random(1)
    for n in (0, 1, 7, 512):
        assert tokenizer.count(words.text(n, rng)) == n


def test_shared_prefix_is_deterministic_and_mixes_groups(words: Words) -> None:
    first = shared_prefix(SMALL, words, seed=3)
    assert first == shared_prefix(SMALL, words, seed=3)
    assert first != shared_prefix(SMALL, words, seed=4)
    assert len(first) == 12
    assert [i.index for i in first] == list(range(12))
    # Shuffled: the groups do not come back to back.
    assert [i.group for i in first] != sorted(i.group for i in first)


def test_zipf_skews_group_popularity_and_keeps_each_groups_prefix(words: Words) -> None:
    spec = SharedPrefix(
        groups=8, prompts_per_group=50, system_prompt_len=12, question_len=4, zipf=1.5
    )
    items = shared_prefix(spec, words, seed=5)
    assert items == shared_prefix(spec, words, seed=5)
    assert len(items) == 8 * 50
    assert [i.index for i in items] == list(range(400))
    counts = Counter(i.group for i in items)
    # Weight 1/(k+1)^1.5: group 0 has about 2.8 times group 1 and 22 times group 7.
    assert counts[0] > 2 * counts[1] > 0
    assert counts[0] > 8 * counts[7]
    systems: dict[int, str] = {}
    for item in items:
        assert systems.setdefault(item.group, item.messages[0].content) == item.messages[0].content
    # Zero skew draws every group alike: no group is far from its share of 400.
    flat = Counter(i.group for i in shared_prefix(replace(spec, zipf=0.0), words, seed=5))
    assert all(25 <= n <= 80 for n in flat.values()), flat


def test_shared_prefix_groups_share_an_exact_token_prefix(
    words: Words, tokenizer: WordTokenizer
) -> None:
    items = shared_prefix(SMALL, words, seed=0)
    by_group: dict[int, list[list[int]]] = {}
    for item in items:
        tokens = tokenizer.encode(item.prompt)
        assert len(tokens) == item.input_len == 48
        by_group.setdefault(item.group, []).append(tokens)
    assert len(by_group) == 4
    prefixes = set()
    for prompts in by_group.values():
        assert len(prompts) == 3
        assert len({tuple(p[:40]) for p in prompts}) == 1  # one system prompt per group
        assert len({tuple(p[40:]) for p in prompts}) == 3  # its own question each
        prefixes.add(tuple(prompts[0][:40]))
    assert len(prefixes) == 4


def test_multi_turn_prompts_grow_by_history(words: Words, tokenizer: WordTokenizer) -> None:
    spec = MultiTurn(sessions=3, turns=4, question_len=5, output_len=7)
    items = multi_turn(spec, words, seed=0)
    assert items == multi_turn(spec, words, seed=0)
    assert len(items) == 12
    for session in range(3):
        turns = [i for i in items if i.group == session]
        assert [t.turn for t in turns] == [0, 1, 2, 3]
        assert turns[0].after is None
        for earlier, later in pairwise(turns):
            assert later.after == earlier.index
            assert later.prompt.startswith(earlier.prompt)
            assert later.input_len == earlier.input_len + 12
            assert len(later.messages) == len(earlier.messages) + 2
        for turn in turns:
            assert tokenizer.count(turn.prompt) == turn.input_len


def test_poisson_arrivals() -> None:
    assert poisson_arrivals(3, math.inf, seed=0) == [0.0, 0.0, 0.0]
    times = poisson_arrivals(2000, 50.0, seed=1)
    assert times == sorted(times)
    assert times == poisson_arrivals(2000, 50.0, seed=1)
    assert 2000 / times[-1] == pytest.approx(50.0, rel=0.1)
    with pytest.raises(DynError, match="--request-rate"):
        poisson_arrivals(1, 0.0, seed=0)


def test_with_arrivals_keeps_a_trace_schedule(words: Words) -> None:
    items = with_arrivals(shared_prefix(SMALL, words, seed=0), 10.0, seed=0)
    assert all(i.arrival_s is not None and i.arrival_s > 0 for i in items)
    again = with_arrivals(items, math.inf, seed=0)
    assert [i.arrival_s for i in again] == [i.arrival_s for i in items]


def test_make_workload_names(words: Words) -> None:
    assert len(make_workload("shared-prefix", words, 0, shared=SMALL, limit=5)) == 5
    assert len(make_workload("multi-turn", words, 0, multi=MultiTurn(2, 2, 4, 4))) == 4
    with pytest.raises(DynError, match="unknown workload 'nope'; available: shared-prefix"):
        make_workload("nope", words, 0)


def test_trace_reader_small_file(tmp_path: Path, words: Words, tokenizer: WordTokenizer) -> None:
    path = tmp_path / "t.jsonl"
    records = [
        {"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]},
        {"timestamp": 1500, "input_length": 100, "output_length": 3, "hash_ids": [1]},
        {"timestamp": 3000, "input_length": 1100, "output_length": 0, "hash_ids": [9, 10]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    items = list(read_trace(path, words, seed=0, speedup=2.0))
    assert [i.arrival_s for i in items] == [0.0, 0.75, 1.5]
    assert [i.input_len for i in items] == [600, 100, 1100]
    assert [tokenizer.count(i.prompt) for i in items] == [600, 100, 1100]  # padded past blocks
    assert items[2].output_len == 1  # at least one token is always asked for
    first, second = (tokenizer.encode(i.prompt) for i in items[:2])
    assert first[:100] == second
    assert len(list(read_trace(path, words, seed=0, limit=2))) == 2


def test_trace_reader_errors(tmp_path: Path, words: Words) -> None:
    with pytest.raises(DynError, match="cannot read trace"):
        list(read_trace(tmp_path / "missing.jsonl", words, seed=0))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0}\n')
    with pytest.raises(DynError, match=r"bad.jsonl:1: not a Mooncake trace record"):
        list(read_trace(bad, words, seed=0))
    with pytest.raises(DynError, match="--trace-speedup"):
        list(read_trace(bad, words, seed=0, speedup=0))


def test_mooncake_trace_replay(words: Words, tokenizer: WordTokenizer) -> None:
    count = 200
    raw = [json.loads(line) for line in TRACE.read_text().splitlines()[:count]]
    items = list(read_trace(TRACE, words, seed=0, speedup=4.0, limit=count))
    assert len(items) == count
    assert [i.arrival_s for i in items] == [r["timestamp"] / 1000 / 4.0 for r in raw]
    texts: dict[int, list[int]] = {}
    for record, item in zip(raw, items, strict=True):
        tokens = tokenizer.encode(item.prompt)
        assert abs(len(tokens) - record["input_length"]) <= 2
        assert item.output_len == max(1, record["output_length"])
        # Equal hash ids, equal text: every full block matches its earlier occurrence.
        for b, hash_id in enumerate(record["hash_ids"]):
            block = tokens[b * MOONCAKE_BLOCK_TOKENS : (b + 1) * MOONCAKE_BLOCK_TOKENS]
            if len(block) < MOONCAKE_BLOCK_TOKENS:
                continue
            assert texts.setdefault(hash_id, block) == block
    # The first requests of that trace do share blocks.
    assert len(texts) < sum(len(r["hash_ids"]) for r in raw)
