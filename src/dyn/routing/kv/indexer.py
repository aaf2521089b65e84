"""The radix index of which worker caches which blocks, fed by the workers' KV events.

A node of the tree is a prefix of blocks. Rather than node objects with child maps, a node
is one int key, ``hash((parent_key, local_hash))`` chained from :data:`ROOT`, and the whole
tree is one flat dict from node key to a bit mask of the workers holding that node. A
child lookup is then one tuple hash and one dict probe, pruning an empty node is deleting
its key, and nothing per node is allocated beyond the dict slot and two ints. This is the
layout that measured fastest in CPython (``dyn bench router``); the tree is still the one
docs/kv-routing.md describes: nodes keyed by local hash under their parent, each with the set
of workers holding it, plus a per-worker map from the worker's block hash to the node.

Node keys are 64-bit hashes, so two different prefixes could share one key with the same
odds as two different prompts sharing a sequence hash on the engine side: the index
accepts that risk exactly as the engines' own prefix caches do. Keys never leave the
process, so CPython's tuple hash (deterministic for ints) is a fair choice.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Sequence

from dyn.kv.events import KvCleared, KvEvent, KvRemoved, KvStored

__all__ = ["ROOT", "RadixIndex", "chain_keys"]

ROOT = 0  # the key of the empty prefix; never stored in the mask table

# Lanes of match counts (see RadixIndex._overlaps): bits per lane and the array typecode
# that reads them, by the longest walk the lane must count (< 2**8, < 2**16, beyond).
_LANE_WIDTHS = ((8, "B"), (16, "H"), (32, next(c for c in "IL" if array(c).itemsize == 4)))
_LANES_MEMO = 4096  # spread masks remembered per lane width before the memo restarts
_BIG_ENDIAN = sys.byteorder == "big"


def chain_keys(local_hashes: Iterable[int]) -> list[int]:
    """The node key of every prefix of ``local_hashes`` (the router's own block ids)."""
    key = ROOT
    return [key := hash((key, local)) for local in local_hashes]


def _spread(mask: int, width: int) -> int:
    """``mask`` with bit ``i`` moved to bit ``i * width``: a 1 in each holder's lane."""
    lanes = 0
    while mask:
        low = mask & -mask
        lanes |= 1 << (width * (low.bit_length() - 1))
        mask ^= low
    return lanes


class RadixIndex:
    """Which worker holds which prefix, as its events told; answers overlap queries.

    Worker ids are arbitrary strings; internally each gets a bit in the node masks. The
    index is single-threaded and synchronous: the caller serialises events and queries.
    """

    def __init__(self) -> None:
        self._masks: dict[int, int] = {}  # node key -> bit mask of the workers holding it
        self._blocks: dict[str, dict[int, int]] = {}  # worker -> its block hash -> node key
        self._bit: dict[str, int] = {}  # worker -> its bit (1 << index)
        self._by_index: list[str | None] = []  # bit index -> worker, None when free
        self._lanes: dict[int, dict[int, int]] = {}  # lane width -> mask -> _spread(mask)

    # -- workers ---------------------------------------------------------------------

    def _worker_bit(self, worker: str) -> int:
        bit = self._bit.get(worker)
        if bit is None:
            try:
                index = self._by_index.index(None)
                self._by_index[index] = worker
            except ValueError:
                index = len(self._by_index)
                self._by_index.append(worker)
            bit = self._bit[worker] = 1 << index
            self._blocks[worker] = {}
        return bit

    @property
    def workers(self) -> list[str]:
        return list(self._bit)

    def remove_worker(self, worker: str) -> None:
        """Forget ``worker`` and every block it held (it left, or will resend a snapshot)."""
        if worker not in self._bit:
            return
        self.clear(worker)
        bit = self._bit.pop(worker)
        del self._blocks[worker]
        self._by_index[bit.bit_length() - 1] = None

    def block_count(self, worker: str) -> int:
        """How many blocks ``worker`` holds, as far as the index knows."""
        blocks = self._blocks.get(worker)
        return 0 if blocks is None else len(blocks)

    def __len__(self) -> int:
        """The number of (worker, block) pairs indexed."""
        return sum(len(blocks) for blocks in self._blocks.values())

    @property
    def node_count(self) -> int:
        return len(self._masks)

    # -- events ----------------------------------------------------------------------

    def apply(self, worker: str, event: KvEvent) -> None:
        """Apply one of ``worker``'s events."""
        data = event.data
        if isinstance(data, KvStored):
            self.store(
                worker, data.parent_hash, [(b.block_hash, b.tokens_hash) for b in data.blocks]
            )
        elif isinstance(data, KvRemoved):
            self.remove(worker, data.block_hashes)
        elif isinstance(data, KvCleared):
            self.clear(worker)

    def store(
        self, worker: str, parent_hash: int | None, blocks: Sequence[tuple[int, int]]
    ) -> bool:
        """``worker`` now caches ``blocks`` (block hash, local hash) after ``parent_hash``.

        Returns False, changing nothing, when the parent is unknown: the blocks cannot be
        placed in the tree (Dynamo skips such an event the same way).
        """
        bit = self._worker_bit(worker)
        mine = self._blocks[worker]
        if parent_hash is None:
            node = ROOT
        else:
            found = mine.get(parent_hash)
            if found is None:
                return False
            node = found
        masks = self._masks
        get = masks.get
        for block_hash, local in blocks:
            node = hash((node, local))
            masks[node] = get(node, 0) | bit
            mine[block_hash] = node
        return True

    def remove(self, worker: str, block_hashes: Iterable[int]) -> None:
        """``worker`` evicted these blocks; nodes nobody holds any more are pruned."""
        mine = self._blocks.get(worker)
        if mine is None:
            return
        keep = ~self._bit[worker]
        masks = self._masks
        pop = mine.pop
        for block_hash in block_hashes:
            node = pop(block_hash, None)
            if node is None:
                continue
            # .get/.pop: a worker that reported one prefix under two block hashes must
            # not crash the index (its second removal finds the node already gone).
            mask = masks.get(node, 0) & keep
            if mask:
                masks[node] = mask
            else:
                masks.pop(node, None)

    def clear(self, worker: str) -> None:
        """``worker`` dropped every block."""
        mine = self._blocks.get(worker)
        if not mine:
            return
        keep = ~self._bit[worker]
        masks = self._masks
        for node in mine.values():
            mask = masks.get(node, 0) & keep
            if mask:
                masks[node] = mask
            else:
                masks.pop(node, None)
        mine.clear()

    # -- queries ---------------------------------------------------------------------

    def find_matches(
        self, local_hashes: Iterable[int], *, early_exit: bool = False
    ) -> dict[str, int]:
        """Overlap in blocks per worker for a prompt with these local block hashes.

        Walks from the root; every node on the path adds 1 to each worker holding it;
        the walk stops at the first prefix nobody holds. With ``early_exit`` it also stops
        once a single worker remains (faster, but that worker's count is then a floor).
        Workers with no overlap are absent from the result.
        """
        # match_keys(chain_keys(...)) in one loop: no key list, no hashing past the miss.
        get = self._masks.get
        starts: list[int] = []
        runs: list[int] = []
        holders = 0
        depth = 0
        key = ROOT
        for local in local_hashes:
            key = hash((key, local))
            mask = get(key)
            if mask is None:
                break
            if mask != holders:
                starts.append(depth)
                runs.append(mask)
                holders = mask
                if early_exit and not mask & (mask - 1):
                    depth += 1
                    break
            depth += 1
        return self._overlaps(starts, runs, depth)

    def match_keys(self, keys: Sequence[int], *, early_exit: bool = False) -> dict[str, int]:
        """:meth:`find_matches` for a prompt whose chain keys the caller already has."""
        get = self._masks.get
        # The walk only notes where the holder set changes (a few dozen times along a
        # path of hundreds of nodes); the counting is done per run by _overlaps.
        starts: list[int] = []  # the depth at which each run of one holder set begins
        runs: list[int] = []  # that run's holder mask
        holders = 0
        depth = 0
        for key in keys:
            mask = get(key)
            if mask is None:
                break
            if mask != holders:
                starts.append(depth)
                runs.append(mask)
                holders = mask
                if early_exit and not mask & (mask - 1):
                    depth += 1
                    break
            depth += 1
        return self._overlaps(starts, runs, depth)

    def _overlaps(self, starts: list[int], runs: list[int], depth: int) -> dict[str, int]:
        """Per worker, the total length of the runs that hold it (``depth`` ends the last).

        Rather than a dict update per worker per run, every worker gets a lane of bits in
        one int: a run adds its length times its mask spread over the lanes, so a run
        costs one multiply-add however many workers hold it, and the lanes are read out
        once at the end through an array. A lane holds at most ``depth``, so it never
        carries into the next.
        """
        if not runs:
            return {}
        width, code = _LANE_WIDTHS[(depth >= 256) + (depth >= 65536)]
        table = self._lanes.get(width)
        if table is None or len(table) > _LANES_MEMO:
            table = self._lanes[width] = {}
        starts.append(depth)
        total = 0
        for begin, end, mask in zip(starts, starts[1:], runs, strict=False):  # starts: +1
            lanes = table.get(mask)
            if lanes is None:
                lanes = table[mask] = _spread(mask, width)
            total += (end - begin) * lanes
        counts = array(code)
        counts.frombytes(total.to_bytes(-(-total.bit_length() // width) * (width // 8), "little"))
        if _BIG_ENDIAN:
            counts.byteswap()
        names = self._by_index
        return {names[index] or "": count for index, count in enumerate(counts) if count}
