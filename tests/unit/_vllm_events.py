"""vLLM's KV event structs, as ``vllm/distributed/kv_events.py`` declares them, in both
wire forms: arrays (vLLM up to 0.10) and maps (later releases); and a prefix cache that
reports itself both as vLLM and as a dyn worker would."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import msgspec

from dyn.discovery.base import Instance
from dyn.kv.events import KvCleared, KvEvent, KvRemoved, KvStored, StoredBlock
from dyn.kv.hashing import local_block_hashes, sequence_hashes
from dyn.kv.vllm import block_hash_id
from dyn.routing.base import RouteRequest
from dyn.routing.kv.router import KvRouter


class ArrayEvent(msgspec.Struct, array_like=True, omit_defaults=True, tag=True):
    pass


class ArrayBlockStored(ArrayEvent, tag="BlockStored"):
    block_hashes: list[int | bytes]
    parent_block_hash: int | bytes | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None = None


class ArrayBlockRemoved(ArrayEvent, tag="BlockRemoved"):
    block_hashes: list[int | bytes]
    medium: str | None = None


class ArrayAllBlocksCleared(ArrayEvent, tag="AllBlocksCleared"):
    pass


class ArrayBatch(msgspec.Struct, array_like=True, omit_defaults=True):
    ts: float
    events: list[ArrayBlockStored | ArrayBlockRemoved | ArrayAllBlocksCleared]
    data_parallel_rank: int | None = None


class MapEvent(msgspec.Struct, omit_defaults=True, tag=True):
    pass


class MapBlockStored(MapEvent, tag="BlockStored"):
    block_hashes: list[int | bytes]
    parent_block_hash: int | bytes | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None = None
    extra_keys: list[Any] | None = None
    group_idx: int | None = None


class MapBlockRemoved(MapEvent, tag="BlockRemoved"):
    block_hashes: list[int | bytes]
    medium: str | None
    group_idx: int | None = None


class MapAllBlocksCleared(MapEvent, tag="AllBlocksCleared"):
    pass


class MapBatch(msgspec.Struct, omit_defaults=True):
    ts: float
    events: list[MapBlockStored | MapBlockRemoved | MapAllBlocksCleared]
    data_parallel_rank: int | None = None


def stored(
    hashes: list[int | bytes],
    parent: int | bytes | None,
    tokens: list[int],
    block_size: int,
    *,
    array: bool = True,
) -> Any:
    if array:
        return ArrayBlockStored(hashes, parent, tokens, block_size, None, "GPU")
    return MapBlockStored(hashes, parent, tokens, block_size, None, "GPU")


def removed(hashes: list[int | bytes], *, array: bool = True) -> Any:
    return ArrayBlockRemoved(hashes, "GPU") if array else MapBlockRemoved(hashes, "GPU")


def cleared(*, array: bool = True) -> Any:
    return ArrayAllBlocksCleared() if array else MapAllBlocksCleared()


def batch(events: list[Any], *, array: bool = True) -> bytes:
    wrapper: Any = ArrayBatch(1.0, events, 0) if array else MapBatch(1.0, events, 0)
    return msgspec.msgpack.encode(wrapper)


BS = 4


def vllm_hash(parent: bytes | None, tokens: list[int]) -> bytes:
    """A stand-in for vLLM's sha256 block hash: anything but dyn's own hashing."""
    return hashlib.sha256(repr((parent, tokens)).encode()).digest()


class Engine:
    """One prefix cache seen twice: as vLLM reports it, and as a dyn worker would."""

    def __init__(self, *, array: bool = True, as_bytes: bool = True) -> None:
        self.array = array
        self.as_bytes = as_bytes
        self.cached: dict[int, tuple[Any, int, int | None]] = {}  # dyn seq hash -> vllm, parent
        self.vllm: list[bytes] = []
        self.dyn: list[KvEvent] = []
        self._id = 0

    def _h(self, raw: bytes) -> int | bytes:
        return raw if self.as_bytes else block_hash_id(raw)

    def _dyn(self, data: KvStored | KvRemoved | KvCleared) -> None:
        self._id += 1
        self.dyn.append(KvEvent(event_id=self._id, data=data))

    def store(self, tokens: list[int]) -> None:
        local = local_block_hashes(tokens, BS)
        seq = sequence_hashes(local)
        start = 0
        while start < len(seq) and seq[start] in self.cached:
            start += 1
        if start == len(seq):
            return
        parent_raw = None if start == 0 else self.cached[seq[start - 1]][0]
        raws: list[bytes] = []
        previous = parent_raw
        for i in range(start, len(seq)):
            raw = vllm_hash(previous, tokens[i * BS : (i + 1) * BS])
            raws.append(raw)
            self.cached[seq[i]] = (raw, local[i], seq[i - 1] if i else None)
            previous = raw
        self.vllm.append(
            batch(
                [
                    stored(
                        [self._h(r) for r in raws],
                        None if parent_raw is None else self._h(parent_raw),
                        tokens[start * BS : len(seq) * BS],
                        BS,
                        array=self.array,
                    )
                ],
                array=self.array,
            )
        )
        blocks = [StoredBlock(seq[i], local[i]) for i in range(start, len(seq))]
        self._dyn(KvStored(blocks, seq[start - 1] if start else None))

    def evict_leaf(self, rng: random.Random) -> None:
        parents = {parent for _, _, parent in self.cached.values()}
        leaves = [h for h in self.cached if h not in parents]
        if not leaves:
            return
        victim = rng.choice(leaves)
        raw, _, _ = self.cached.pop(victim)
        self.vllm.append(batch([removed([self._h(raw)], array=self.array)], array=self.array))
        self._dyn(KvRemoved([victim]))

    def clear(self) -> None:
        self.cached.clear()
        self.vllm.append(batch([cleared(array=self.array)], array=self.array))
        self._dyn(KvCleared())


def workers() -> list[Instance]:
    return [
        Instance(
            namespace="ns",
            component="worker",
            endpoint="generate",
            instance_id=name,
            address="inproc://x",
            transport="inproc",
            metadata={"block_size": BS},
        )
        for name in ("w0", "w1")
    ]


def prompts(rng: random.Random, n: int) -> list[list[int]]:
    stems = [[rng.randrange(50) for _ in range(rng.randrange(4, 20))] for _ in range(4)]
    return [
        rng.choice(stems) + [rng.randrange(50) for _ in range(rng.randrange(0, 16))]
        for _ in range(n)
    ]


def overlaps(router: KvRouter, tokens: list[int]) -> dict[str, int]:
    scores = router.explain(workers(), RouteRequest("q", tokens=tokens))
    return {s.instance_id: s.overlap_blocks for s in scores}
