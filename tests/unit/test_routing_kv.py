"""The kv strategy: overlap versus load, block sizes, options, spreading, explanations."""

from __future__ import annotations

import random
from collections import Counter, deque
from typing import Any

import pytest
from _instances import fake_instances
from hypothesis import given, settings
from hypothesis import strategies as st

from dyn.discovery.base import Instance
from dyn.errors import RoutingError
from dyn.kv.events import KvEvent, KvStored, StoredBlock, WorkerLoad
from dyn.kv.hashing import local_block_hashes
from dyn.routing.base import RouteRequest
from dyn.routing.kv.indexer import chain_keys
from dyn.routing.kv.router import KvRouter

BS = 16


def _workers(n: int, block_size: int | None = BS) -> list[Instance]:
    return fake_instances(n, prefix="w", component="worker", block_size=block_size)


def _cache(router: KvRouter, worker: str, tokens: list[int], event_id: int = 1) -> None:
    """``worker`` reports every full block of ``tokens`` as cached."""
    local = local_block_hashes(tokens, BS)
    blocks = [StoredBlock(k, h) for k, h in zip(chain_keys(local), local, strict=True)]
    router.on_kv_event(worker, KvEvent(event_id, KvStored(blocks)))


def _route(router: KvRouter, candidates: list[Instance], rid: str, tokens: list[int]) -> str:
    request = RouteRequest(request_id=rid, tokens=tokens)
    chosen = router.select(candidates, request)
    router.on_routed(chosen, request)
    return chosen.instance_id


@settings(max_examples=100, deadline=None)
@given(
    cached=st.lists(st.integers(0, 8), min_size=2, max_size=6),
    load=st.integers(0, 3),
    seed=st.integers(0, 1000),
)
def test_never_less_overlap_than_the_best_among_equally_loaded(
    cached: list[int], load: int, seed: int
) -> None:
    rng = random.Random(seed)
    prompt = [rng.randrange(1000) for _ in range(8 * BS + 5)]
    candidates = _workers(len(cached))
    router = KvRouter({"seed": seed})
    for worker, blocks in zip(candidates, cached, strict=True):
        if blocks:
            _cache(router, worker.instance_id, prompt[: blocks * BS])
        for k in range(load):  # the same unrelated load on every worker
            other = [rng.randrange(1000, 2000) for _ in range(3 * BS)]
            request = RouteRequest(request_id=f"{worker.instance_id}-{k}", tokens=other)
            router.on_routed(worker, request)
    chosen = router.select(candidates, RouteRequest(request_id="q", tokens=prompt))
    assert cached[candidates.index(chosen)] == max(cached)


def test_load_outweighs_a_small_overlap() -> None:
    candidates = _workers(2)
    router = KvRouter({"seed": 0})
    prompt = list(range(20 * BS))
    _cache(router, "w0", prompt[:BS])  # one block cached on w0 ...
    for k in range(4):  # ... but w0 is busy
        router.on_routed(candidates[0], RouteRequest(request_id=f"b{k}", tokens=[5000 + k] * 64))
    assert _route(router, candidates, "q", prompt) == "w1"


def test_all_requests_sharing_their_first_block_still_spread() -> None:
    # Mooncake's conversation trace: every request shares block 0, then diverges.
    rng = random.Random(3)
    candidates = _workers(4)
    router = KvRouter({"seed": 3})
    first = [rng.randrange(32_000) for _ in range(BS)]
    in_flight: deque[tuple[Instance, RouteRequest]] = deque()
    counts: Counter[str] = Counter()
    for i in range(400):
        tokens = first + [rng.randrange(32_000) for _ in range(rng.randrange(BS, 40 * BS))]
        request = RouteRequest(request_id=f"r{i}", tokens=tokens)
        chosen = router.select(candidates, request)
        router.on_routed(chosen, request)
        counts[chosen.instance_id] += 1
        _cache(router, chosen.instance_id, tokens, event_id=i + 1)
        in_flight.append((chosen, request))
        if len(in_flight) > 12:
            done, finished = in_flight.popleft()
            router.on_first_item(done, finished)
            router.on_finished(done, finished)
    mean = 400 / 4
    assert max(counts.values()) <= 1.5 * mean, counts


def test_shared_prefix_groups_stick_to_the_worker_that_caches_them() -> None:
    rng = random.Random(1)
    candidates = _workers(4)
    router = KvRouter({"seed": 1})
    prefixes = [[rng.randrange(32_000) for _ in range(512)] for _ in range(8)]
    home: dict[int, set[str]] = {}
    for i in range(200):
        group = rng.randrange(8)
        tokens = prefixes[group] + [rng.randrange(32_000) for _ in range(64)]
        request = RouteRequest(request_id=f"r{i}", tokens=tokens)
        chosen = router.select(candidates, request)
        router.on_routed(chosen, request)
        router.on_first_item(chosen, request)
        _cache(router, chosen.instance_id, tokens, event_id=i + 1)
        router.on_finished(chosen, request)
        home.setdefault(group, set()).add(chosen.instance_id)
    assert all(len(workers) == 1 for workers in home.values()), home


def test_in_flight_prefix_counts_before_the_worker_reports_it() -> None:
    candidates = _workers(3)
    router = KvRouter({"seed": 0})
    prompt = list(range(32 * BS))
    first = _route(router, candidates, "a", prompt)
    # No event yet: the blocks are still being prefilled on `first`, shared by the engine.
    assert _route(router, candidates, "b", [*prompt, 1, 2, 3]) == first


def test_workers_that_disagree_on_block_size_are_refused() -> None:
    candidates = _workers(1, 16) + [
        w.__class__(**{**_struct_fields(w), "instance_id": "w9", "metadata": {"block_size": 64}})
        for w in _workers(1)
    ]
    router = KvRouter()
    with pytest.raises(
        RoutingError,
        match=r"workers disagree on block_size: w0=16, w9=64; the kv router needs one block size",
    ):
        router.select(candidates, RouteRequest(request_id="r", tokens=[1] * 64))


def _struct_fields(instance: Instance) -> dict[str, Any]:
    return {f: getattr(instance, f) for f in instance.__struct_fields__}


def test_block_size_comes_from_registration_or_the_option() -> None:
    router = KvRouter({"block_size": 4})
    prompt = list(range(16))
    _route(router, _workers(1, None), "a", prompt)
    assert router.tracker.flight("w0").active_blocks == 4  # 16 tokens / option 4
    router = KvRouter({"block_size": 4})
    _route(router, _workers(1, 8), "a", prompt)
    assert router.tracker.flight("w0").active_blocks == 2  # the worker's 8 wins


def test_unknown_and_bad_options_name_the_valid_ones() -> None:
    with pytest.raises(
        RoutingError,
        match="unknown option 'overlap_weight' for the kv strategy; valid options: "
        "block_size, overlap_score_weight, seed, temperature",
    ):
        KvRouter({"overlap_weight": 2})
    with pytest.raises(RoutingError, match="temperature must be a number"):
        KvRouter({"temperature": "hot"})


def test_tracking_follows_the_request() -> None:
    candidates = _workers(2)
    router = KvRouter()
    request = RouteRequest(request_id="r", tokens=list(range(3 * BS + 1)))
    chosen = router.select(candidates, request)
    router.on_routed(chosen, request)
    flight = router.tracker.flight(chosen.instance_id)
    assert (flight.requests, flight.prefill_tokens, flight.active_blocks) == (1, 3 * BS + 1, 4)
    router.on_first_item(chosen, request)
    assert router.tracker.flight(chosen.instance_id).prefill_tokens == 0
    router.on_finished(chosen, request)  # also what a cancel calls
    assert router.tracker.flight(chosen.instance_id).requests == 0
    assert router.describe() == {}


def test_explain_matches_select_and_changes_nothing() -> None:
    candidates = _workers(3)
    router = KvRouter({"seed": 5})
    prompt = list(range(10 * BS))
    _cache(router, "w2", prompt[: 6 * BS])
    request = RouteRequest(request_id="q", tokens=prompt)
    before = router.describe()
    scores = router.explain(candidates, request)
    assert router.describe() == before
    assert [s.instance_id for s in scores if s.chosen] == ["w2"]
    w2 = scores[2]
    assert w2.overlap_blocks == 6
    assert w2.prefill_blocks == 4.0
    assert w2.decode_blocks == 10.0
    assert w2.cost == pytest.approx(router.settings.overlap_score_weight * 4 + 10)
    assert router.select(candidates, request).instance_id == "w2"


def test_temperature_samples_reproducibly() -> None:
    candidates = _workers(4)
    picks = []
    for _ in range(2):
        router = KvRouter({"temperature": 0.5, "seed": 11})
        picks.append([_route(router, candidates, f"r{i}", [i] * 64) for i in range(50)])
    assert picks[0] == picks[1]
    assert len(set(picks[0])) > 1


def test_describe_and_membership() -> None:
    candidates = _workers(2)
    router = KvRouter()
    _cache(router, "w0", list(range(2 * BS)))
    router.on_load("w1", WorkerLoad(5, 100, 1, 2, 0.5))
    _route(router, candidates, "r", list(range(2 * BS)))
    rows = router.describe()
    assert rows["w0"]["cached_blocks"] == 2
    assert rows["w0"]["requests"] == 1
    assert rows["w1"]["reported_total_blocks"] == 100
    router.on_instances(["w1"])
    assert set(router.describe()) == {"w1"}


def test_a_direct_target_is_honoured_and_tracked() -> None:
    candidates = _workers(3)
    router = KvRouter()
    request = RouteRequest(request_id="r", tokens=[1] * 40, instance_id="w1")
    chosen = router.select(candidates, request)
    router.on_routed(chosen, request)
    assert chosen.instance_id == "w1"
    assert router.tracker.flight("w1").requests == 1
    assert [s.chosen for s in router.explain(candidates, request)] == [False, True, False]
