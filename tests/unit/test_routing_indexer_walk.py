"""Overlap counts of the radix index, past one machine word of workers and long paths.

The index counts a walk per run of one holder set, in lanes of one int sized by the
walk's length (8, 16 or 32 bits per worker): these tests cross each of those edges and
compare with a plain model of per-worker prefix sets.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dyn.kv.hashing import sequence_hashes
from dyn.routing.kv.indexer import RadixIndex, chain_keys

WORKERS = [f"w{i}" for i in range(70)]  # more than 64: masks wider than a machine word
Path = tuple[int, ...]


class Model:
    """Per worker, the prefixes (paths of local hashes) it holds, by block hash."""

    def __init__(self) -> None:
        self.held: dict[str, dict[int, Path]] = {}

    def find(self, query: list[int], early_exit: bool) -> dict[str, int]:
        paths = {w: set(held.values()) for w, held in self.held.items()}
        counts: dict[str, int] = {}
        previous: set[str] = set()
        for depth in range(1, len(query) + 1):
            prefix = tuple(query[:depth])
            holders = {w for w, held in paths.items() if prefix in held}
            if not holders:
                break
            for w in holders:
                counts[w] = counts.get(w, 0) + 1
            if early_exit and holders != previous and len(holders) == 1:
                break
            previous = holders
        return counts


def _chain(base: Path, locals_: list[int]) -> tuple[list[tuple[int, int]], list[Path]]:
    blocks, paths, path = [], [], base
    for local in locals_:
        path = (*path, local)
        blocks.append((sequence_hashes(list(path))[-1], local))
        paths.append(path)
    return blocks, paths


# A chain is a short pattern repeated, so paths reach past 256 blocks (16-bit lanes).
chain_st = st.builds(
    lambda pattern, times: pattern * times,
    st.lists(st.integers(0, 2), min_size=1, max_size=4),
    st.sampled_from([1, 3, 70, 90]),
)
op_st = st.one_of(
    # parent: -1 the root, 99 an unknown block, else one of the worker's blocks.
    st.tuples(st.just("store"), st.sampled_from(WORKERS), st.integers(-1, 99), chain_st),
    st.tuples(
        st.just("remove"), st.sampled_from(WORKERS), st.lists(st.integers(0, 400), max_size=30)
    ),
    st.tuples(st.just("clear"), st.sampled_from(WORKERS)),
    st.tuples(st.just("leave"), st.sampled_from(WORKERS)),
)


@settings(max_examples=150, deadline=None)
@given(
    order=st.permutations(WORKERS),
    ops=st.lists(op_st, max_size=60),
    queries=st.lists(chain_st, min_size=1, max_size=4),
)
def test_walk_counts_agree_with_the_model(
    order: list[str], ops: list[tuple[Any, ...]], queries: list[list[int]]
) -> None:
    index = RadixIndex()
    model = Model()
    # Every worker first holds one block of its own, so workers take bits 0..69.
    first = [("store", w, -1, [1000 + i]) for i, w in enumerate(order)]
    for op in first + ops:
        worker = op[1]
        held = model.held.setdefault(worker, {})
        known = sorted(held)
        if op[0] == "store":
            choice = op[2]
            parent = (
                None
                if choice < 0 or (choice < 99 and not known)
                else 12345
                if choice == 99
                else known[choice % len(known)]
            )
            if parent is not None and parent not in held:
                assert not index.store(worker, parent, [(1, 1)])
                continue
            blocks, paths = _chain(() if parent is None else held[parent], op[3])
            assert index.store(worker, parent, blocks)
            held.update((h, p) for (h, _), p in zip(blocks, paths, strict=True))
        elif op[0] == "remove":
            hashes = [known[i] for i in op[2] if i < len(known)]
            index.remove(worker, hashes)
            for h in hashes:
                held.pop(h, None)
        elif op[0] == "clear":
            index.clear(worker)
            held.clear()
        else:
            index.remove_worker(worker)
            held.clear()
    # Queries: the given chains, and the longest prefix each worker holds.
    tails = [max(held.values(), key=len) for held in model.held.values() if held]
    for query in [*queries, *(list(t) for t in tails)]:
        for early_exit in (False, True):
            want = model.find(query, early_exit)
            assert index.find_matches(query, early_exit=early_exit) == want
            assert index.match_keys(chain_keys(query), early_exit=early_exit) == want


def test_a_walk_past_65536_blocks_counts_in_wide_lanes() -> None:
    index = RadixIndex()
    local = list(range(70_000))
    keys = chain_keys(local)
    index.store("a", None, list(zip(keys, local, strict=True)))
    index.store("b", None, list(zip(keys[:300], local[:300], strict=True)))
    index.store("c", None, list(zip(keys[:66_000], local[:66_000], strict=True)))
    assert index.find_matches(local) == {"a": 70_000, "b": 300, "c": 66_000}
    assert index.match_keys(keys[:65_535]) == {"a": 65_535, "b": 300, "c": 65_535}
    assert index.match_keys(keys[:255]) == {"a": 255, "b": 255, "c": 255}
