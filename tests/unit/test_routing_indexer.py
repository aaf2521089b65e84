"""The radix index agrees with a brute-force model of per-worker prefix sets."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dyn.kv.events import KvCleared, KvEvent, KvRemoved, KvStored, StoredBlock
from dyn.kv.hashing import sequence_hashes
from dyn.routing.kv.indexer import RadixIndex

WORKERS = ["a", "b", "c"]
Path = tuple[int, ...]


def _block_hash(path: Path) -> int:
    # As an engine computes it: equal prefixes, equal hashes.
    return sequence_hashes(list(path))[-1]


class Model:
    """Per worker, the set of prefixes (paths of local hashes) it holds."""

    def __init__(self) -> None:
        self.held: dict[str, dict[int, Path]] = {w: {} for w in WORKERS}

    def store(self, worker: str, parent: int | None, locals_: list[int]) -> None:
        if parent is None:
            path: Path = ()
        elif parent in self.held[worker]:
            path = self.held[worker][parent]
        else:
            return
        for local in locals_:
            path = (*path, local)
            self.held[worker][_block_hash(path)] = path

    def find(self, query: list[int]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for depth in range(1, len(query) + 1):
            prefix = tuple(query[:depth])
            holders = [w for w in WORKERS if prefix in self.held[w].values()]
            if not holders:
                break
            for w in holders:
                counts[w] = counts.get(w, 0) + 1
        return counts


locals_st = st.lists(st.integers(0, 3), min_size=1, max_size=4)
op_st = st.one_of(
    st.tuples(st.just("store"), st.sampled_from(WORKERS), st.integers(-1, 12), locals_st),
    st.tuples(st.just("remove"), st.sampled_from(WORKERS), st.lists(st.integers(0, 12))),
    st.tuples(st.just("clear"), st.sampled_from(WORKERS)),
    st.tuples(st.just("leave"), st.sampled_from(WORKERS)),
)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(op_st, max_size=40), queries=st.lists(locals_st, min_size=1, max_size=6))
def test_index_agrees_with_brute_force(
    ops: list[tuple[Any, ...]], queries: list[list[int]]
) -> None:
    index = RadixIndex()
    model = Model()
    for event_id, op in enumerate(ops, 1):
        worker = op[1]
        known = sorted(model.held[worker])
        if op[0] == "store":
            # parent: -1 = root, an index into the worker's known blocks, or unknown.
            choice = op[2]
            parent = None if choice < 0 else known[choice] if choice < len(known) else 12345
            base = () if parent is None else model.held[worker].get(parent, ())
            blocks, path = [], base
            for local in op[3]:
                path = (*path, local)
                blocks.append(StoredBlock(_block_hash(path), local))
            index.apply(worker, KvEvent(event_id, KvStored(blocks, parent)))
            model.store(worker, parent, op[3])
        elif op[0] == "remove":
            hashes = [known[i] for i in op[2] if i < len(known)] + [999]
            index.apply(worker, KvEvent(event_id, KvRemoved(hashes)))
            for h in hashes:
                model.held[worker].pop(h, None)
        elif op[0] == "clear":
            index.apply(worker, KvEvent(event_id, KvCleared()))
            model.held[worker].clear()
        else:
            index.remove_worker(worker)
            model.held[worker].clear()
    for query in queries:
        assert index.find_matches(query) == model.find(query)
    for w in WORKERS:
        assert index.block_count(w) == len(model.held[w])
    # Pruned: every node in the table is held by someone.
    held_paths = {p for w in WORKERS for p in model.held[w].values()}
    assert index.node_count == len(held_paths)


def test_unknown_parent_skips_the_event() -> None:
    index = RadixIndex()
    assert not index.store("a", 42, [(1, 1)])
    assert index.find_matches([1]) == {}
    assert index.store("a", None, [(1, 1), (2, 2)])
    assert index.store("a", 2, [(3, 3)])
    assert index.find_matches([1, 2, 3, 4]) == {"a": 3}


def test_scores_count_holders_per_node_until_the_first_miss() -> None:
    index = RadixIndex()
    index.store("a", None, [(1, 10), (2, 20), (3, 30)])
    index.store("b", None, [(1, 10), (2, 20)])
    index.store("c", None, [(9, 99)])
    assert index.find_matches([10, 20, 30]) == {"a": 3, "b": 2}
    assert index.find_matches([10, 21, 30]) == {"a": 1, "b": 1}
    assert index.find_matches([10, 20, 30], early_exit=True) == {"a": 3, "b": 2}
    index.remove("a", [2])  # a middle block evicted: b still holds it, a's tail counts
    assert index.find_matches([10, 20, 30]) == {"a": 2, "b": 2}


def test_a_worker_that_leaves_frees_its_slot() -> None:
    index = RadixIndex()
    index.store("a", None, [(1, 10)])
    index.store("b", None, [(1, 10)])
    index.remove_worker("a")
    index.store("c", None, [(2, 10), (3, 20)])
    assert index.find_matches([10, 20]) == {"b": 1, "c": 2}
    assert sorted(index.workers) == ["b", "c"]
