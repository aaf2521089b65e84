"""Block hashes, computed the same way by engines (in their events) and routers.

A prompt is split into full blocks of ``block_size`` tokens (a partial last block is
ignored). A block's local hash is xxh3-64, seed 1337, of its tokens as little-endian
u32; its sequence hash chains the local hashes so that equal sequence hashes mean equal
prefixes (docs/kv-hashing.md, as Dynamo computes them).
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Sequence

import xxhash

__all__ = ["HASH_SEED", "local_block_hashes", "pack_u32", "sequence_hashes"]

HASH_SEED = 1337  # Dynamo's seed for block hashes
_PAIR = struct.Struct("<QQ")
_U32 = next(code for code in "IL" if array(code).itemsize == 4)  # 32-bit unsigned
_BIG_ENDIAN = sys.byteorder == "big"


def pack_u32(tokens: Sequence[int]) -> array[int]:
    """``tokens`` as little-endian u32, as block hashes read them.

    One C loop (``array.fromlist``), several times faster than ``struct.pack(*tokens)``
    for a long prompt. Raises :class:`OverflowError` for an id outside 0 .. 2**32 - 1.
    """
    packed = array(_U32)
    packed.fromlist(tokens if isinstance(tokens, list) else list(tokens))
    if _BIG_ENDIAN:
        packed.byteswap()
    return packed


def local_block_hashes(tokens: Sequence[int], block_size: int) -> list[int]:
    """The local hash of each full block of ``tokens``."""
    full = len(tokens) - len(tokens) % block_size
    if full == 0:
        return []
    data = memoryview(pack_u32(tokens[:full] if full < len(tokens) else tokens)).cast("B")
    step = block_size * 4
    digest = xxhash.xxh3_64_intdigest
    return [digest(data[start : start + step], HASH_SEED) for start in range(0, full * 4, step)]


def sequence_hashes(local_hashes: Sequence[int]) -> list[int]:
    """Chain local hashes: ``seq[0] = local[0]``, ``seq[i] = xxh3(seq[i-1] || local[i])``."""
    result: list[int] = []
    previous = 0
    for i, local in enumerate(local_hashes):
        previous = (
            local
            if i == 0
            else xxhash.xxh3_64_intdigest(_PAIR.pack(previous, local), seed=HASH_SEED)
        )
        result.append(previous)
    return result
