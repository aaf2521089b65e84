"""The kv_latency rule: its arithmetic's properties, then the strategy built on it."""

from __future__ import annotations

import math
import random

import pytest
from _instances import fake_instances
from hypothesis import given, settings
from hypothesis import strategies as st

from dyn.discovery.base import Instance
from dyn.errors import RoutingError
from dyn.kv.events import KvEvent, KvStored, StoredBlock
from dyn.kv.hashing import local_block_hashes
from dyn.routing.base import RouteRequest
from dyn.routing.kv.indexer import chain_keys
from dyn.routing.kv.latency import KvLatencyRouter
from dyn.routing.kv.latency_cost import (
    DEFAULT_SLACK,
    MOCKER_TIMING,
    LatencyTerms,
    WorkerState,
    latency_terms,
    pick,
)

BS = 16
CAPACITY = 512 * BS

states = st.builds(
    WorkerState,
    overlap_blocks=st.integers(0, 40),
    requests=st.integers(0, 40),
    prefill_tokens=st.integers(0, 20_000),
    context_tokens=st.integers(0, 60_000),
    capacity_tokens=st.sampled_from([CAPACITY, 4 * CAPACITY]),
)


def _terms(state: WorkerState, prompt: int = 40 * BS, output: int = 64) -> LatencyTerms:
    return latency_terms(state, prompt_tokens=prompt, output_tokens=output, block_size=BS)


def _dominates(a: LatencyTerms, b: LatencyTerms) -> bool:
    return a.prefill_ms < b.prefill_ms and a.decode_ms < b.decode_ms and a.harm_ms < b.harm_ms


@settings(max_examples=300, deadline=None)
@given(
    workers=st.lists(states, min_size=1, max_size=8),
    slack=st.sampled_from([0.0, 0.05, 0.5, 5.0]),
    bounded=st.booleans(),
)
def test_never_picks_a_worker_worse_on_every_term(
    workers: list[WorkerState], slack: float, bounded: bool
) -> None:
    """Worse than any other worker, or (with the load bound) than any it lets through."""
    terms = [_terms(w) for w in workers]
    overlaps = [w.overlap_blocks for w in workers]
    requests = [w.requests for w in workers] if bounded else None
    chosen = pick(terms, overlaps, slack, requests)
    rivals = set(range(len(workers)))
    if requests is not None:
        cap = math.ceil((1 + slack) * (sum(requests) + 1) / len(requests))
        within = {i for i in rivals if requests[i] + 1 <= cap}
        rivals = within | {i for i in rivals if overlaps[i] > max(overlaps[j] for j in within)}
    for i in chosen:
        assert i in rivals
        assert not any(_dominates(terms[other], terms[i]) for other in rivals)


@settings(max_examples=300, deadline=None)
@given(
    load=states,
    overlaps=st.lists(st.integers(0, 40), min_size=2, max_size=8),
    slack=st.sampled_from([0.0, 0.05, 0.5]),
)
def test_with_equal_load_the_largest_overlap_wins(
    load: WorkerState, overlaps: list[int], slack: float
) -> None:
    workers = [
        WorkerState(
            o, load.requests, load.prefill_tokens, load.context_tokens, load.capacity_tokens
        )
        for o in overlaps
    ]
    terms = [_terms(w) for w in workers]
    for chosen in pick(terms, overlaps, slack):
        assert overlaps[chosen] == max(overlaps)


@settings(max_examples=300, deadline=None)
@given(a=states, more_requests=st.integers(1, 10), more_context=st.integers(0, 5000))
def test_a_busier_worker_never_promises_an_earlier_finish(
    a: WorkerState, more_requests: int, more_context: int
) -> None:
    """The request's own wait and decode grow with the load there. (Its harm to others
    need not: a step's time is concave in the load, so one more sequence slows a busy
    worker's step less than an idle one's.)"""
    busier = WorkerState(
        a.overlap_blocks,
        a.requests + more_requests,
        a.prefill_tokens + more_context,
        a.context_tokens + more_context,
        a.capacity_tokens,
    )
    assert _terms(busier).prefill_ms >= _terms(a).prefill_ms
    assert _terms(busier).decode_ms >= _terms(a).decode_ms


def test_the_terms_follow_the_timing_model() -> None:
    idle = WorkerState(0, 0, 0, 0, CAPACITY)
    terms = _terms(idle, prompt=576, output=64)
    assert terms.prefill_ms == pytest.approx(MOCKER_TIMING.prefill(576))
    assert terms.decode_ms == pytest.approx(64 * MOCKER_TIMING.decode((576 + 32) / CAPACITY))
    assert terms.harm_ms == 0.0  # nobody there to slow down
    cached = _terms(WorkerState(32, 0, 0, 0, CAPACITY), prompt=576, output=64)
    assert cached.prefill_ms == pytest.approx(MOCKER_TIMING.prefill(64))
    busy = _terms(WorkerState(0, 3, 0, 3 * 576, CAPACITY), prompt=576, output=64)
    before = MOCKER_TIMING.decode((3 * 576 + 3 * 32) / CAPACITY)
    after = MOCKER_TIMING.decode((4 * 576 + 4 * 32) / CAPACITY)
    assert busy.harm_ms == pytest.approx(3 * (32 * (after - before) + MOCKER_TIMING.prefill(576)))


def test_slack_lets_a_cached_worker_win_only_when_it_costs_little() -> None:
    cheap = LatencyTerms(20.0, 600.0, 0.0)  # idle, nothing cached
    cached = LatencyTerms(17.0, 610.0, 10.0)  # 1 % dearer, holds the prefix
    assert pick([cheap, cached], [0, 32], 0.0) == [0]
    assert pick([cheap, cached], [0, 32], DEFAULT_SLACK) == [1]
    loaded = LatencyTerms(17.0, 700.0, 200.0)  # far dearer: the prefix is not worth it
    assert pick([cheap, loaded], [0, 32], DEFAULT_SLACK) == [0]
    assert pick([cheap, cheap], [0, 0], DEFAULT_SLACK) == [0, 1]  # a tie stays a tie


# -- the strategy -------------------------------------------------------------------------


def _workers(n: int, total_blocks: int = 512) -> list[Instance]:
    return fake_instances(
        n, prefix="w", component="worker", block_size=BS, metadata={"total_blocks": total_blocks}
    )


def _route(router: KvLatencyRouter, candidates: list[Instance], rid: str, tokens: list[int]) -> str:
    request = RouteRequest(request_id=rid, tokens=tokens, extra={"max_tokens": 64})
    chosen = router.select(candidates, request)
    router.on_routed(chosen, request)
    return chosen.instance_id


@settings(max_examples=60, deadline=None)
@given(
    workers=st.integers(2, 8),
    requests=st.integers(1, 60),
    blocks=st.integers(1, 40),
    slack=st.sampled_from([0.0, DEFAULT_SLACK, 0.25]),
    seed=st.integers(0, 1000),
)
def test_with_equal_overlap_no_worker_gets_more_than_its_share(
    workers: int, requests: int, blocks: int, slack: float, seed: int
) -> None:
    """Like requests nobody caches (equal overlap, zero; equal lengths): in flight per
    worker stays within (1 + slack) of the mean, rounded up to whole requests. (Requests
    of different lengths are balanced by the work they bring, not by their number.)"""
    rng = random.Random(seed)
    candidates = _workers(workers)
    router = KvLatencyRouter({"slack": slack, "seed": seed})
    for i in range(requests):
        prompt = [rng.randrange(50_000) for _ in range(blocks * BS)]
        _route(router, candidates, f"r{i}", prompt)
        in_flight = [router.tracker.flight(c.instance_id).requests for c in candidates]
        mean = (i + 1) / workers
        assert max(in_flight) <= math.ceil((1 + slack) * mean), in_flight


def _cache(router: KvLatencyRouter, worker: str, tokens: list[int]) -> None:
    local = local_block_hashes(tokens, BS)
    blocks = [StoredBlock(k, h) for k, h in zip(chain_keys(local), local, strict=True)]
    router.on_kv_event(worker, KvEvent(1, KvStored(blocks)))


def test_a_loaded_holder_loses_to_an_idle_worker_where_kv_would_pile_on() -> None:
    candidates = _workers(2)
    router = KvLatencyRouter({"seed": 1})
    prefix = list(range(32 * BS))
    _cache(router, "w0", prefix)
    # Three requests of the same group already decode on w0.
    for i in range(3):
        request = RouteRequest(f"old{i}", [*prefix, *range(1000 + 64 * i, 1064 + 64 * i)])
        router.on_routed(candidates[0], request)
        router.on_first_item(candidates[0], request)
    new = RouteRequest("new", [*prefix, *range(5000, 5064)], extra={"max_tokens": 64})
    assert router.select(candidates, new).instance_id == "w1"
    scores = router.explain(candidates, new)
    w0, w1 = scores
    assert w0.overlap_blocks == 32
    assert w1.overlap_blocks == 0
    assert w0.terms["prefill_ms"] < w1.terms["prefill_ms"]  # the cache helps w0 ...
    assert w0.terms["harm_ms"] > w1.terms["harm_ms"] == 0  # ... but it slows three others
    assert w1.chosen
    assert not w0.chosen
    assert w0.cost == pytest.approx(sum(w0.terms.values()))


def test_output_budget_comes_from_the_request_or_the_option() -> None:
    candidates = _workers(1)
    prompt = list(range(4 * BS))
    short = RouteRequest("a", prompt, extra={"max_tokens": 8})
    unsaid = RouteRequest("b", prompt)
    router = KvLatencyRouter({"output_tokens": 8})
    (with_budget,) = router.explain(candidates, short)
    (with_option,) = router.explain(candidates, unsaid)
    assert with_budget.terms == with_option.terms
    (default,) = KvLatencyRouter().explain(candidates, unsaid)
    assert default.terms["decode_ms"] > with_option.terms["decode_ms"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"overlap_score_weight": 2}, "unknown option 'overlap_score_weight' for the kv_latency"),
        ({"slack": -0.1}, "slack must not be negative"),
        ({"slack": "lots"}, "option slack must be a number"),
        ({"output_tokens": 1.5}, "option output_tokens must be a whole number"),
        ({"capacity_blocks": -1}, "capacity_blocks must not be negative"),
    ],
)
def test_bad_options_are_one_clear_error(options: dict[str, object], message: str) -> None:
    with pytest.raises(RoutingError, match=message):
        KvLatencyRouter(options)


def test_capacity_comes_from_the_worker_then_the_option() -> None:
    prompt = list(range(8 * BS))
    small, large = _workers(1, total_blocks=64), _workers(1, total_blocks=4096)
    router = KvLatencyRouter()
    (on_small,) = router.explain(small, RouteRequest("a", prompt))
    (on_large,) = router.explain(large, RouteRequest("a", prompt))
    assert on_small.terms["decode_ms"] > on_large.terms["decode_ms"]
    (fixed,) = KvLatencyRouter({"capacity_blocks": 64}).explain(large, RouteRequest("a", prompt))
    assert fixed.terms == on_small.terms
