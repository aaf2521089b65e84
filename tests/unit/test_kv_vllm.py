"""vLLM's KV events translated into dyn's: the kv index ends up exactly as dyn's own
events for the same blocks would leave it."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import msgspec
import pytest
from _vllm_events import BS, Engine, batch, overlaps, prompts, removed, stored
from hypothesis import given
from hypothesis import strategies as st

from dyn.kv.events import KvCleared, KvRemoved, KvStored, StoredBlock
from dyn.kv.hashing import local_block_hashes
from dyn.kv.vllm import VllmEventError, VllmKvTranslator, block_hash_id
from dyn.routing.kv.router import KvRouter


@pytest.mark.parametrize(("array", "as_bytes"), [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("seed", range(5))
def test_vllm_events_index_exactly_as_dyn_events(array: bool, as_bytes: bool, seed: int) -> None:
    rng = random.Random(seed)
    engines = {"w0": Engine(array=array, as_bytes=as_bytes), "w1": Engine(array=array)}
    workload = prompts(rng, 40)
    for step, tokens in enumerate(workload):
        engine = engines[rng.choice(["w0", "w1"])]
        engine.store(tokens)
        if rng.random() < 0.3:
            engine.evict_leaf(rng)
        if step == 25 and seed % 2:
            engine.clear()
    own, translated = KvRouter(), KvRouter()
    for name, engine in engines.items():
        for event in engine.dyn:
            own.on_kv_event(name, event)
        translator = VllmKvTranslator(BS)
        for seq, payload in enumerate(engine.vllm):
            for event in translator.feed(payload, seq):
                translated.on_kv_event(name, event)
        # A router that subscribes late gets the same picture from the snapshot.
        late = KvRouter()
        for event in translator.snapshot():
            late.on_kv_event(name, event)
        assert late.index.block_count(name) == own.index.block_count(name)
    for tokens in [*workload, *prompts(rng, 20)]:
        local = local_block_hashes(tokens, BS)
        assert translated.index.find_matches(local) == own.index.find_matches(local)
        assert overlaps(translated, tokens) == overlaps(own, tokens)


def test_snapshot_replays_to_the_same_matches() -> None:
    rng = random.Random(7)
    engine = Engine()
    for tokens in prompts(rng, 30):
        engine.store(tokens)
        engine.evict_leaf(rng)
    translator = VllmKvTranslator(BS)
    live, replayed = KvRouter(), KvRouter()
    for seq, payload in enumerate(engine.vllm):
        for event in translator.feed(payload, seq):
            live.on_kv_event("w", event)
    snapshot = translator.snapshot()
    assert isinstance(snapshot[0].data, KvCleared)
    for event in snapshot:
        replayed.on_kv_event("w", event)
    for tokens in prompts(rng, 30):
        local = local_block_hashes(tokens, BS)
        assert replayed.index.find_matches(local) == live.index.find_matches(local)


def test_snapshot_puts_a_restored_parent_before_its_children() -> None:
    translator = VllmKvTranslator(BS)
    tokens = list(range(12))
    translator.feed(batch([stored([1, 2, 3], None, tokens, BS)]))
    translator.feed(batch([removed([1])]))
    translator.feed(batch([stored([1], None, tokens[:4], BS)]))  # the parent comes back
    router = KvRouter()
    for event in translator.snapshot():
        router.on_kv_event("w", event)
    assert router.index.find_matches(local_block_hashes(tokens, BS)) == {"w": 3}


def test_a_sequence_gap_clears_the_worker() -> None:
    translator = VllmKvTranslator(BS)
    first = translator.feed(batch([stored([1], None, [1, 2, 3, 4], BS)]), seq=0)
    assert [type(e.data) for e in first] == [KvStored]
    after_gap = translator.feed(batch([stored([2], None, [5, 6, 7, 8], BS)]), seq=5)
    assert [type(e.data) for e in after_gap] == [KvCleared, KvStored]
    assert [e.event_id for e in first + after_gap] == [1, 2, 3]
    assert translator.cached_blocks == 1


def test_bytes_hashes_fold_to_vllms_own_int_form() -> None:
    raw = bytes(range(32))
    assert block_hash_id(raw) == int.from_bytes(raw, "big") & ((1 << 64) - 1)
    translator = VllmKvTranslator(BS)
    (event,) = translator.feed(batch([stored([raw], None, [1, 2, 3, 4], BS, array=False)]))
    assert isinstance(event.data, KvStored)
    assert event.data.blocks == [
        StoredBlock(block_hash_id(raw), local_block_hashes([1, 2, 3, 4], BS)[0])
    ]
    (removal,) = translator.feed(batch([removed([block_hash_id(raw)])]))
    assert removal.data == KvRemoved([block_hash_id(raw)])


def test_removals_of_unknown_blocks_and_other_tiers_are_dropped() -> None:
    translator = VllmKvTranslator(BS)
    assert translator.feed(batch([removed([99])])) == []
    cpu = msgspec.msgpack.encode([0.0, [["BlockStored", [5], None, [1, 2, 3, 4], BS, None, "CPU"]]])
    assert translator.feed(cpu) == []
    lora = msgspec.msgpack.encode([0.0, [["BlockStored", [5], None, [1, 2, 3, 4], BS, 3]]])
    assert translator.feed(lora) == []
    future = msgspec.msgpack.encode({"ts": 0.0, "events": [{"type": "SomethingNew", "x": 1}]})
    assert translator.feed(future) == []


def test_another_block_size_is_refused_with_the_fix() -> None:
    translator = VllmKvTranslator(16)
    with pytest.raises(VllmEventError, match="set the worker's block_size to 4"):
        translator.feed(batch([stored([1], None, [1, 2, 3, 4], 4)]))


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(payload: bytes) -> None:
    translator = VllmKvTranslator(BS)
    with contextlib.suppress(VllmEventError):
        translator.feed(payload, 0)


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.text(max_size=5)
        | st.binary(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        ),
        max_leaves=30,
    )
)
def test_arbitrary_msgpack_values_never_crash(value: Any) -> None:
    translator = VllmKvTranslator(BS)
    for payload in (msgspec.msgpack.encode(value), msgspec.msgpack.encode([0.0, [value]])):
        with contextlib.suppress(VllmEventError):
            translator.feed(payload, 0)
