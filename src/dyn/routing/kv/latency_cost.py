"""The ``kv_latency`` rule as plain arithmetic (docs/kv-routing.md, "kv_latency").

For one request and each worker, the rule predicts three latencies from the engine's
timing model, in milliseconds:

- ``prefill``: the wait for the first token, the prefill of what is queued there plus
  this prompt's uncached tokens;
- ``decode``: this request's own decoding, its output tokens times the step time of the
  worker with it added;
- ``harm``: what it adds to the requests already running there: every one of their
  remaining steps gets slower, and its prefill step stalls them once.

A worker's cost is their sum. The cheapest worker wins, except that a worker holding
more of the prompt may win while its cost is within ``slack`` (a fraction) of the
cheapest: reuse is bought only where it costs little latency. A worker worse on every
term than another is never chosen.

Each sequence's decode reads its whole context, shared prefix included, so the load is
counted per sequence: two requests of one prefix on one worker make twice its decode work
even though the cache stores the prefix once. That is what makes piling a prefix group
onto one worker expensive, and why a cost in blocks stored (``kv``) under-prices it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dyn.engines.mocker.timing import decode_ms_at_load, prefill_ms

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "DEFAULT_SLACK",
    "MOCKER_TIMING",
    "LatencyTerms",
    "TimingModel",
    "WorkerState",
    "latency_terms",
    "pick",
]

# A 5 % latency allowance for reuse: in virtual-time sweeps of the shared-prefix workload
# (docs/kv-routing.md) it keeps e2e p90 within 2 % of round-robin's at 32 in flight and
# equal at 4 and 8, while reaching most of the reuse a larger slack gives.
DEFAULT_SLACK = 0.05
# Output tokens assumed when a request does not say how many it may make.
DEFAULT_OUTPUT_TOKENS = 256


@dataclass(frozen=True)
class TimingModel:
    """Step times in ms: ``prefill(tokens)`` for a step computing that many uncached
    prompt tokens, ``decode(load)`` for a decode step at KV load ``load`` (context tokens
    of the decoding sequences over the cache's capacity, 0-1)."""

    prefill: Callable[[int], float]
    decode: Callable[[float], float]


# The mocker's own model (docs/mocker-timing.md); its shape, a per-step constant plus a
# term growing with the tokens computed or read, is that of a real engine's step.
MOCKER_TIMING = TimingModel(prefill=prefill_ms, decode=decode_ms_at_load)


@dataclass(frozen=True)
class WorkerState:
    """What the router knows of one worker when a request comes.

    ``context_tokens`` sums the prompts of the requests in flight there, each counted
    once per request (see the module docstring).
    """

    overlap_blocks: int
    requests: int
    prefill_tokens: int
    context_tokens: int
    capacity_tokens: int
    # The cache itself: blocks the requests in flight hold (shared ones once), and the
    # blocks this request would add to them.
    active_blocks: int = 0
    new_blocks: int = 0


@dataclass(frozen=True)
class LatencyTerms:
    prefill_ms: float
    decode_ms: float
    harm_ms: float

    @property
    def total_ms(self) -> float:
        return self.prefill_ms + self.decode_ms + self.harm_ms


def latency_terms(
    state: WorkerState,
    *,
    prompt_tokens: int,
    output_tokens: int,
    block_size: int,
    timing: TimingModel = MOCKER_TIMING,
) -> LatencyTerms:
    """One worker's predicted latencies for one request (see the module docstring).

    The requests in flight are taken to be halfway through their output on average, so
    each holds half an output's tokens beyond its prompt and has half of it still to make.
    """
    uncached = max(0, prompt_tokens - state.overlap_blocks * block_size)
    half = output_tokens / 2
    capacity = max(1, state.capacity_tokens)
    before = state.context_tokens + state.requests * half
    after = before + prompt_tokens + half
    step_after = timing.decode(after / capacity)
    step_before = timing.decode(before / capacity) if state.requests else step_after
    own_prefill = timing.prefill(uncached)
    # A request whose blocks do not fit beside those in flight waits for enough of them
    # to finish; in flight requests have, on average, half an output to go, spread evenly.
    wait = 0.0
    excess = state.active_blocks + state.new_blocks - capacity // block_size
    if excess > 0 and state.active_blocks:
        wait = min(1.0, excess / state.active_blocks) * output_tokens * step_before
    return LatencyTerms(
        prefill_ms=wait + timing.prefill(state.prefill_tokens + uncached),
        decode_ms=output_tokens * step_after,
        harm_ms=state.requests * (half * (step_after - step_before) + own_prefill),
    )


def _dominated(terms: Sequence[LatencyTerms], i: int) -> bool:
    """Whether another worker is better than ``i`` on every term."""
    mine = terms[i]
    return any(
        other.prefill_ms < mine.prefill_ms
        and other.decode_ms < mine.decode_ms
        and other.harm_ms < mine.harm_ms
        for other in terms
    )


def pick(
    terms: Sequence[LatencyTerms],
    overlaps: Sequence[int],
    slack: float,
    requests: Sequence[int] | None = None,
) -> list[int]:
    """The indices the rule chooses among (more than one only on an exact tie).

    A worker whose ``requests`` in flight, with this one added, would exceed ``1 + slack``
    times the mean (rounded up) is left out unless it holds more of the prompt than every
    worker within that bound: without a cache to gain, no timing model, however wrong
    about a busy worker, can pile requests on it. Among the rest, the workers within
    ``slack`` of the lowest cost and not worse on every term than another; of these,
    those holding the most of the prompt; of these, the cheapest.
    """
    allowed: Sequence[int] = range(len(terms))
    if requests is not None:
        cap = math.ceil((1.0 + slack) * (sum(requests) + 1) / len(requests))
        within = [i for i in allowed if requests[i] + 1 <= cap]
        most_within = max(overlaps[i] for i in within)
        allowed = [i for i in allowed if requests[i] + 1 <= cap or overlaps[i] > most_within]
    totals = [t.total_ms for t in terms]
    bound = min(totals[i] for i in allowed) * (1.0 + slack)
    eligible = [i for i in allowed if totals[i] <= bound]
    if len(eligible) > 1:
        # The cheapest allowed is dominated only by a worker over the bound; keep it then.
        eligible = [i for i in eligible if not _dominated(terms, i)] or eligible
    most = max(overlaps[i] for i in eligible)
    eligible = [i for i in eligible if overlaps[i] == most]
    cheapest = min(totals[i] for i in eligible)
    return [i for i in eligible if totals[i] == cheapest]
