"""Deterministic "model" output: the next token is a hash of the sampling seed and the context.

A streaming xxh3 over the context's tokens gives the same digest however the context was
built up, so a request resubmitted elsewhere with its prompt plus the tokens generated so
far continues with exactly the tokens the first engine would have produced. A request's
own ``seed`` is folded into the engine's (:func:`sampling_seed`) and travels with a
resend, so it too continues identically.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import xxhash

from dyn.kv.hashing import pack_u32

__all__ = ["TokenSampler", "sampling_seed"]

_TOKEN = struct.Struct("<I")


def sampling_seed(engine_seed: int, request_seed: int | None) -> int:
    """The xxh3 seed of a request: the engine's, changed by the request's own if given.

    Any integer a client sends (negative, or wider than 64 bits) maps to a fixed 64-bit
    value, and different seeds to different ones (but for hash collisions).
    """
    if request_seed is None:
        return engine_seed
    return xxhash.xxh3_64_intdigest(str(request_seed).encode(), seed=engine_seed)


class TokenSampler:
    """The sampling state of one sequence: a running hash of its context."""

    __slots__ = ("_hash", "_vocab_size")

    def __init__(self, seed: int, vocab_size: int, context: Sequence[int]) -> None:
        self._vocab_size = vocab_size
        self._hash = xxhash.xxh3_64(seed=seed)
        if context:
            self._hash.update(pack_u32(context))

    def peek(self) -> int:
        """The token the current context leads to (near-uniform over the vocabulary)."""
        return int(self._hash.intdigest()) % self._vocab_size

    def digest(self) -> int:
        """The 64-bit digest of the current context; ``peek()`` is it modulo the
        vocabulary size, and its other bits drive the decisions that go with the token."""
        return int(self._hash.intdigest())

    def push(self, token: int) -> None:
        """Extend the context by ``token``."""
        self._hash.update(_TOKEN.pack(token))
