"""The KV block manager: reference-counted blocks, prefix reuse, LRU eviction.

Every one of the ``num_blocks`` slots is in exactly one of four states:

- free;
- *private*: held by one sequence but not (yet) hashed: prompt blocks still being
  prefilled and the partial last block, which is only published once it is full;
- *active*: a hashed block with a reference count > 0, shared by every sequence whose
  context starts with the same prefix (same sequence hash);
- *inactive*: a hashed block nobody holds; still matchable by a later prompt, and evicted
  least recently released first when a slot is needed.

Hashed blocks are published as they appear (``KvStored``) and when evicted
(``KvRemoved``). Only hash-level state is kept: the simulator never needs block contents.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from dyn.kv.events import KvCleared, KvRemoved, KvStored, StoredBlock

__all__ = ["BlockManager", "EventData"]

EventData = KvStored | KvRemoved | KvCleared


class BlockManager:
    """Block accounting for one engine. Events accumulate until :meth:`take_events`."""

    def __init__(self, num_blocks: int, admit_limit: int) -> None:
        self.num_blocks = num_blocks
        self.admit_limit = admit_limit
        self.private = 0
        self._refs: dict[int, int] = {}  # active: sequence hash -> reference count
        self._inactive: OrderedDict[int, None] = OrderedDict()  # oldest release first
        # Every resident hashed block (active or inactive): hash -> (tokens hash, parent).
        self._meta: dict[int, tuple[int, int | None]] = {}
        self._events: list[EventData] = []

    # -- counts --------------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Slots held by at least one sequence."""
        return len(self._refs) + self.private

    @property
    def inactive(self) -> int:
        return len(self._inactive)

    @property
    def free(self) -> int:
        return self.num_blocks - self.active - len(self._inactive)

    def ref_count(self, block_hash: int) -> int:
        return self._refs.get(block_hash, 0)

    def active_refs(self) -> dict[int, int]:
        """A copy of the reference counts of active hashed blocks (for checks)."""
        return dict(self._refs)

    # -- admission -----------------------------------------------------------------------

    def match(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of ``hashes`` are resident (active or inactive)."""
        for count, block_hash in enumerate(hashes):
            if block_hash not in self._meta:
                return count
        return len(hashes)

    def can_admit(self, cached: Sequence[int], new_slots: int) -> bool:
        """Whether holding ``cached`` and ``new_slots`` more slots stays under the limit."""
        revived = sum(1 for block_hash in cached if block_hash not in self._refs)
        return self.active + revived + new_slots <= self.admit_limit

    def acquire(self, hashes: Sequence[int]) -> None:
        """Take one reference on each resident block of ``hashes``."""
        for block_hash in hashes:
            self._ref(block_hash)

    def allocate(self, count: int) -> bool:
        """Take ``count`` private slots, evicting inactive blocks if needed.

        Returns False, changing nothing, when not even eviction makes enough room.
        """
        if count > self.free + len(self._inactive):
            return False
        shortfall = count - self.free
        if shortfall > 0:
            evicted = []
            for _ in range(shortfall):
                block_hash, _ = self._inactive.popitem(last=False)
                del self._meta[block_hash]
                evicted.append(block_hash)
            self._events.append(KvRemoved(block_hashes=evicted))
        self.private += count
        return True

    # -- publishing ----------------------------------------------------------------------

    def commit(
        self, hashes: Sequence[int], tokens_hashes: Sequence[int], parent: int | None
    ) -> None:
        """Turn one private slot per block into the hashed block ``hashes[i]``.

        The blocks are consecutive, following ``parent``. A block someone else already
        stored (same prefix computed meanwhile) is shared instead and our slot is freed;
        only the new ones are published, one ``KvStored`` per unbroken run.
        """
        run: list[StoredBlock] = []
        run_parent = parent
        previous = parent
        for block_hash, tokens_hash in zip(hashes, tokens_hashes, strict=True):
            self.private -= 1
            if block_hash in self._meta:
                self._ref(block_hash)
                if run:
                    self._events.append(KvStored(blocks=run, parent_hash=run_parent))
                    run = []
            else:
                self._refs[block_hash] = 1
                self._meta[block_hash] = (tokens_hash, previous)
                if not run:
                    run_parent = previous
                run.append(StoredBlock(block_hash=block_hash, tokens_hash=tokens_hash))
            previous = block_hash
        if run:
            self._events.append(KvStored(blocks=run, parent_hash=run_parent))

    # -- release -------------------------------------------------------------------------

    def release(self, hashes: Sequence[int], private: int) -> None:
        """Drop a sequence's references: its hashed blocks (in prefix order) and slots.

        Blocks enter the inactive pool tail first, so eviction takes a prefix's leaves
        before its root and a router's index keeps matching the longest remaining prefix.
        """
        if private > self.private:
            raise AssertionError(f"releasing {private} private blocks, {self.private} held")
        self.private -= private
        for block_hash in reversed(hashes):
            count = self._refs[block_hash] - 1
            if count:
                self._refs[block_hash] = count
            else:
                del self._refs[block_hash]
                self._inactive[block_hash] = None

    def clear(self) -> None:
        """Drop every inactive block (``KvCleared`` if nothing else is resident)."""
        if not self._inactive:
            return
        if self._refs:
            dropped = list(self._inactive)
            for block_hash in dropped:
                del self._meta[block_hash]
            self._events.append(KvRemoved(block_hashes=dropped))
        else:
            self._meta.clear()
            self._events.append(KvCleared())
        self._inactive.clear()

    def take_events(self) -> list[EventData]:
        events, self._events = self._events, []
        return events

    # -- snapshot ------------------------------------------------------------------------

    def stored(self) -> list[KvStored]:
        """``KvStored`` events describing every resident hashed block, parents first.

        Blocks whose parent is no longer resident start their own run with that parent,
        exactly as they were first published. O(resident blocks); for (re)subscribers.
        """
        children: dict[int | None, list[int]] = {}
        for block_hash, (_, parent) in self._meta.items():
            key = parent if parent in self._meta else None
            children.setdefault(key, []).append(block_hash)
        events: list[KvStored] = []
        run: list[StoredBlock] = []
        run_parent: int | None = None
        stack = list(reversed(children.get(None, [])))
        while stack:
            block_hash = stack.pop()
            tokens_hash, parent = self._meta[block_hash]
            if not run or run[-1].block_hash != parent:
                if run:
                    events.append(KvStored(blocks=run, parent_hash=run_parent))
                run, run_parent = [], parent
            run.append(StoredBlock(block_hash=block_hash, tokens_hash=tokens_hash))
            stack.extend(reversed(children.get(block_hash, [])))
        if run:
            events.append(KvStored(blocks=run, parent_hash=run_parent))
        return events

    def check(self) -> None:
        """Assert the accounting invariants (for tests; O(resident blocks))."""
        assert self.private >= 0
        assert all(count > 0 for count in self._refs.values())
        assert not set(self._refs) & set(self._inactive)
        assert set(self._meta) == set(self._refs) | set(self._inactive)
        assert self.free >= 0
        assert self.free + self.active + self.inactive == self.num_blocks

    def _ref(self, block_hash: int) -> None:
        if block_hash in self._refs:
            self._refs[block_hash] += 1
        else:
            del self._inactive[block_hash]  # KeyError here means it was not resident
            self._refs[block_hash] = 1
