"""When a simulated sequence ends by itself: a per-position stop chance (a hazard).

The output length L (end-of-sequence token included) is ``max(1, ceil(X))`` with X
log-normal (:class:`~dyn.engines.mocker.config.OutputLength`). Drawing L once per
request would not survive a migration: the worker that continues a resent request
would draw again. So the decision is taken token by token instead: at output position
n the sequence ends with probability ``h(n) = P(L = n | L >= n)``, decided by bits of the
sampler's digest of the context. The context and n (the resend says how many output
tokens came before it) are all it depends on, so a continuation ends exactly where the
first attempt would have, and the lengths still follow the log-normal.

The hazards are turned once per configuration into 32-bit thresholds: per token the
check is one list index and one integer comparison.
"""

from __future__ import annotations

import math
from functools import cache

__all__ = ["MAX_TABLE", "STOP_BITS", "stop_thresholds"]

# Positions past the table use its last hazard; the default distribution has ~1e-9 of
# its mass beyond 16 K tokens, so the approximation never shows.
MAX_TABLE = 1 << 15
# The stop decision compares the digest's top 32 bits with a threshold: u < h(n) · 2^32.
STOP_BITS = 32
_ONE = 1 << STOP_BITS
# Past this survival the hazard no longer changes anything one could observe.
_NEGLIGIBLE = 1e-12


@cache
def stop_thresholds(median: float, sigma: float) -> tuple[int, ...]:
    """``t[n]``: a sequence at output position ``n`` (1-based; ``t[0]`` unused) ends when
    the top 32 bits of its digest are below ``t[n]``."""
    mu = math.log(median)
    scale = sigma * math.sqrt(2.0)

    def survival(n: int) -> float:  # P(X > n), with P(X > 0) = 1
        if n <= 0:
            return 1.0
        return 0.5 * math.erfc((math.log(n) - mu) / scale)

    table = [0]
    before = 1.0
    for n in range(1, MAX_TABLE):
        after = survival(n)
        if before < _NEGLIGIBLE:
            break
        table.append(min(_ONE, round((1.0 - after / before) * _ONE)))
        before = after
    return tuple(table)
