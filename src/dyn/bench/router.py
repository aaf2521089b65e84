"""``dyn bench router``: how fast the KV index applies events and answers lookups.

A synthetic cache is spread over N workers: prompts of up to 8,192 tokens that share
prefixes by group, with unique tails, published as ``KvStored`` events of 32 blocks (one
512-token prefill) in prefix order. Measured, at each worker count:

- block events applied per second, stored and removed (``RadixIndex.apply``);
- ``find_matches`` latency for an 8,192-token prompt whose whole prefix is indexed (the
  longest walk), and apart from it, the time to hash that prompt's tokens;
- bytes per indexed block, from ``tracemalloc`` over a separate build.

Each figure has a baseline from the same run: inserting / popping the same number of
``hash -> {worker}`` entries in a plain dict, probing a plain dict once per block of the
prompt, and the bytes per entry of that plain dict. Synthetic block hashes are the
router's own chain keys, so equal prefixes get equal hashes as on a real engine.
"""

from __future__ import annotations

import gc
import random
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

from dyn.kv.events import KvEvent, KvRemoved, KvStored, StoredBlock
from dyn.kv.hashing import local_block_hashes
from dyn.routing.kv.indexer import RadixIndex

__all__ = ["BLOCK_SIZE", "PROMPT_TOKENS", "RouterFigures", "run_router_bench"]

BLOCK_SIZE = 16
PROMPT_TOKENS = 8192
EVENT_BLOCKS = 32  # blocks per Stored event: one 512-token prefill
_GROUPS = 64  # shared-prefix groups in the synthetic cache
_PROMPT_BLOCKS = PROMPT_TOKENS // BLOCK_SIZE


@dataclass(frozen=True)
class RouterFigures:
    workers: int
    blocks: int  # (worker, block) pairs indexed
    nodes: int  # distinct prefixes in the tree
    stored_per_s: float
    removed_per_s: float
    dict_insert_per_s: float
    dict_pop_per_s: float
    lookup_p50_us: float
    lookup_p99_us: float
    probe_p50_us: float  # baseline: one plain dict probe per block of the prompt
    probe_p99_us: float
    hashing_p50_us: float
    bytes_per_block: float
    dict_bytes_per_entry: float


def _events(
    workers: int, blocks: int, rng: random.Random, groups: list[list[int]]
) -> list[tuple[str, KvEvent]]:
    """Stored events, in order, that index ``blocks`` distinct (worker, block) pairs."""
    events: list[tuple[str, KvEvent]] = []
    per_worker = blocks // workers
    for w in range(workers):
        worker = f"w{w}"
        have: dict[int, list[int]] = {}  # group -> keys of the prefix this worker holds
        count = 0
        event_id = 0
        while count < per_worker:
            g = rng.randrange(_GROUPS)
            path = have.setdefault(g, [])
            want = rng.randrange(1, _PROMPT_BLOCKS + 1)
            # Two chains: the part of the group prefix this worker lacks, then a unique
            # question after the prefix. Only new blocks are published, as an engine does.
            extension: list[tuple[int, int]] = []
            key = path[-1] if path else 0
            for local in groups[g][len(path) : want]:
                key = hash((key, local))
                extension.append((key, local))
            chains = [(path[-1] if path else None, extension)]
            path.extend(k for k, _ in extension)
            key = path[want - 1]
            question: list[tuple[int, int]] = []
            for _ in range(rng.randrange(16, 65)):
                local = rng.getrandbits(63)
                key = hash((key, local))
                question.append((key, local))
            chains.append((path[want - 1], question))
            for parent, chain in chains:
                chain = chain[: per_worker - count]
                count += len(chain)
                previous = parent
                for begin in range(0, len(chain), EVENT_BLOCKS):
                    chunk = chain[begin : begin + EVENT_BLOCKS]
                    event_id += 1
                    data = KvStored([StoredBlock(k, loc) for k, loc in chunk], previous)
                    events.append((worker, KvEvent(event_id, data)))
                    previous = chunk[-1][0]
    return events


def _removals(events: list[tuple[str, KvEvent]]) -> list[tuple[str, KvEvent]]:
    # Leaves first, as an LRU evicts: the reverse of the store order.
    out: list[tuple[str, KvEvent]] = []
    for worker, event in reversed(events):
        assert isinstance(event.data, KvStored)
        hashes = [b.block_hash for b in reversed(event.data.blocks)]
        out.append((worker, KvEvent(event.event_id, KvRemoved(hashes))))
    return out


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def _apply_all(index: RadixIndex, events: list[tuple[str, KvEvent]]) -> float:
    apply = index.apply
    began = time.perf_counter()
    for worker, event in events:
        apply(worker, event)
    return time.perf_counter() - began


def _timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def run_router_bench(
    worker_counts: list[int],
    blocks: int,
    queries: int,
    *,
    seed: int = 0,
    progress: Callable[[str], None] = lambda _: None,
) -> list[RouterFigures]:
    """Measure the index at each worker count over ``blocks`` indexed blocks in total."""
    rng = random.Random(seed)
    groups = [[rng.getrandbits(63) for _ in range(_PROMPT_BLOCKS)] for _ in range(_GROUPS)]
    results = []
    for workers in worker_counts:
        progress(f"{workers} workers: generating events")
        events = _events(workers, blocks, rng, groups)
        removals = _removals(events)
        n_blocks = sum(len(e.data.blocks) for _, e in events if isinstance(e.data, KvStored))
        gc.collect()
        gc.disable()  # a collection mid-run would be charged to whichever figure it hit
        try:
            progress(f"{workers} workers: applying events")
            stored_s = float("inf")
            for _ in range(2):  # the first pass also warms the allocator: keep the best
                index = RadixIndex()
                stored_s = min(stored_s, _apply_all(index, events))
            nodes = index.node_count
            indexed = len(index)
            progress(f"{workers} workers: lookups")
            lookups, probes, hashing = _lookups(index, groups, queries, rng)
            removed_s = _apply_all(index, removals)
            runs = [_dict_baseline(events) for _ in range(2)]
            insert_s, pop_s = min(r[0] for r in runs), min(r[1] for r in runs)
        finally:
            gc.enable()
        progress(f"{workers} workers: memory")
        bytes_per_block, dict_bytes = _memory(events, indexed)
        results.append(
            RouterFigures(
                workers=workers,
                blocks=indexed,
                nodes=nodes,
                stored_per_s=n_blocks / stored_s,
                removed_per_s=n_blocks / removed_s,
                dict_insert_per_s=n_blocks / insert_s,
                dict_pop_per_s=n_blocks / pop_s,
                lookup_p50_us=_pct(lookups, 50),
                lookup_p99_us=_pct(lookups, 99),
                probe_p50_us=_pct(probes, 50),
                probe_p99_us=_pct(probes, 99),
                hashing_p50_us=_pct(hashing, 50),
                bytes_per_block=bytes_per_block,
                dict_bytes_per_entry=dict_bytes,
            )
        )
    return results


def _lookups(
    index: RadixIndex, groups: list[list[int]], queries: int, rng: random.Random
) -> tuple[list[float], list[float], list[float]]:
    flat = dict.fromkeys(index._masks, 1)  # the baseline: probe a plain dict per block
    lookups: list[float] = []
    probes: list[float] = []
    hashing: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(10):  # warm-up
        index.find_matches(groups[rng.randrange(_GROUPS)])
    for _ in range(queries):
        local = groups[rng.randrange(_GROUPS)]
        began = clock()
        index.find_matches(local)
        lookups.append((clock() - began) / 1000)
        keys = [hash((0, h)) for h in local]
        get = flat.get
        began = clock()
        for key in keys:
            get(key)
        probes.append((clock() - began) / 1000)
        tokens = [rng.randrange(1, 128_000) for _ in range(PROMPT_TOKENS)]
        began = clock()
        local_block_hashes(tokens, BLOCK_SIZE)
        hashing.append((clock() - began) / 1000)
    return lookups, probes, hashing


def _dict_baseline(events: list[tuple[str, KvEvent]]) -> tuple[float, float]:
    pairs = [
        (w, b.block_hash) for w, e in events if isinstance(e.data, KvStored) for b in e.data.blocks
    ]
    table: dict[int, set[str]] = {}

    def insert() -> None:
        for worker, block_hash in pairs:
            holders = table.get(block_hash)
            if holders is None:
                table[block_hash] = {worker}
            else:
                holders.add(worker)

    def pop() -> None:
        for worker, block_hash in pairs:
            holders = table[block_hash]
            holders.discard(worker)
            if not holders:
                del table[block_hash]

    return _timed(insert), _timed(pop)


def _memory(events: list[tuple[str, KvEvent]], indexed: int) -> tuple[float, float]:
    # Hash ints are copied inside the traced region so that the index is charged for the
    # ints it keeps alive, as it would be once the decoded events are dropped.
    plain = [
        (w, [(b.block_hash, b.tokens_hash) for b in e.data.blocks], e.data.parent_hash)
        for w, e in events
        if isinstance(e.data, KvStored)
    ]
    fresh: Callable[[int], int] = _copy
    gc.collect()
    tracemalloc.start()
    try:
        index = RadixIndex()
        for worker, blocks, parent in plain:
            parent_copy = None if parent is None else fresh(parent)
            index.store(worker, parent_copy, [(fresh(h), fresh(t)) for h, t in blocks])
        used_index = tracemalloc.get_traced_memory()[0]
        del index
        gc.collect()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        table: dict[int, set[str]] = {}
        for worker, blocks, _ in plain:
            for block_hash, _ in blocks:
                table.setdefault(fresh(block_hash), set()).add(worker)
        used_dict = tracemalloc.get_traced_memory()[0] - base
        entries = len(table)
        del table
    finally:
        tracemalloc.stop()
    return used_index / max(1, indexed), used_dict / max(1, entries)


def _copy(value: int) -> int:
    """A fresh int object equal to ``value`` (arithmetic on big ints allocates)."""
    return (value ^ 1) ^ 1
