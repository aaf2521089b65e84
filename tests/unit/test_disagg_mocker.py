"""Importing transferred KV blocks into the mocker's cache."""

from __future__ import annotations

from dyn.engines.base import EngineRequest
from dyn.engines.mocker import MockerConfig, MockerCore
from dyn.kv.events import KvStored
from dyn.kv.hashing import local_block_hashes, sequence_hashes

CONFIG = MockerConfig(block_size=4, num_gpu_blocks=32, max_num_seqs=8, max_num_batched_tokens=64)


def first_output_cached(core: MockerCore, tokens: list[int]) -> int:
    core.add(EngineRequest(request_id="r", tokens=tokens, max_tokens=2), 1.0)
    while True:
        for _, output in core.step(1.0).outputs:
            return output.cached_tokens


def test_imported_blocks_are_published_and_hit_by_the_next_request() -> None:
    core = MockerCore(CONFIG)
    tokens = list(range(100, 110))  # two full blocks and two tokens
    resident, events = core.import_blocks(tokens, 0.0)
    assert resident == 2
    (stored,) = [e.data for e in events]
    assert isinstance(stored, KvStored)
    assert stored.parent_hash is None
    expected = sequence_hashes(local_block_hashes(tokens, 4))
    assert [b.block_hash for b in stored.blocks] == expected
    assert core.cached_prefix_tokens(tokens) == 8
    assert core.inactive_blocks == 2  # cached, held by nobody until a request comes
    core.check()
    assert first_output_cached(core, tokens) == 8
    core.check()


def test_import_extends_a_resident_prefix_and_publishes_only_new_blocks() -> None:
    core = MockerCore(CONFIG)
    tokens = list(range(16))
    core.import_blocks(tokens[:8], 0.0)
    resident, events = core.import_blocks(tokens, 0.0)
    assert resident == 4
    (stored,) = [e.data for e in events]
    assert isinstance(stored, KvStored)
    assert len(stored.blocks) == 2
    assert stored.parent_hash == sequence_hashes(local_block_hashes(tokens, 4))[1]
    core.check()


def test_import_stops_at_the_cache_size() -> None:
    core = MockerCore(
        MockerConfig(block_size=4, num_gpu_blocks=3, max_num_seqs=1, max_num_batched_tokens=8)
    )
    resident, _ = core.import_blocks(list(range(40)), 0.0)
    assert resident == 3
    core.check()
