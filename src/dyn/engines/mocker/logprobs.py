"""Simulated log-probabilities: deterministic values derived from the sampler's digest.

The generated token is always the most likely one; the alternatives get decreasing
probabilities whose sum, with the generated token's, stays below 1, and ids that differ
from it and from each other. Computed only for requests that ask for logprobs.
"""

from __future__ import annotations

import math

from dyn.engines.base import TokenLogprob

__all__ = ["simulated_logprobs"]

_MASK = (1 << 64) - 1
_UNIT = 1.0 / (1 << 53)


def _mix(x: int) -> int:
    """One splitmix64 step: a well-spread 64-bit value from another."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def simulated_logprobs(digest: int, token: int, top_n: int, vocab_size: int) -> TokenLogprob:
    """The logprob of ``token`` (sampled from ``digest``) and the ``top_n`` most likely
    tokens at its position, best first, ``token`` first among them."""
    x = _mix(digest)
    best = 0.25 + 0.74 * (x >> 11) * _UNIT  # the generated token's probability
    x = _mix(x)
    ratio = 0.05 + 0.45 * (x >> 11) * _UNIT  # each alternative this much less likely
    chosen = math.log(best)
    top: list[tuple[int, float]] = [(token, chosen)] if top_n else []
    taken = {token}
    # Below the generated token's, and with every later one summing to at most 1 - best.
    p = (1.0 - ratio) * min(best, 1.0 - best)
    while len(top) < min(top_n, vocab_size):
        x = _mix(x)
        other = x % vocab_size
        if other in taken:
            continue
        taken.add(other)
        top.append((other, math.log(p)))
        p *= ratio
    return TokenLogprob(logprob=chosen, top=top)
