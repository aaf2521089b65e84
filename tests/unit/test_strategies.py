"""Routing strategies: fairness, randomness, direct targeting, names and aliases."""

from __future__ import annotations

from collections import Counter

import pytest
from _instances import fake_instances
from hypothesis import given
from hypothesis import strategies as st

from dyn import plugins
from dyn.discovery.base import Instance
from dyn.errors import PluginError, RoutingError
from dyn.routing.base import RouteRequest
from dyn.routing.simple import Direct, Random, RoundRobin


def _instances(n: int) -> list[Instance]:
    return fake_instances(n)


REQ = RouteRequest(request_id="r")


@given(workers=st.integers(1, 16), rounds=st.integers(1, 20))
def test_round_robin_is_fair(workers: int, rounds: int) -> None:
    router = RoundRobin()
    candidates = _instances(workers)
    counts = Counter(router.select(candidates, REQ).instance_id for _ in range(workers * rounds))
    assert set(counts.values()) == {rounds}


@given(st.lists(st.integers(1, 8), min_size=1, max_size=30))
def test_round_robin_spread_stays_within_one_as_instances_change(sizes: list[int]) -> None:
    # Whatever the membership does, each batch of n calls over n instances hits each once.
    router = RoundRobin()
    for n in sizes:
        candidates = _instances(n)
        picked = [router.select(candidates, REQ).instance_id for _ in range(n)]
        assert sorted(picked) == sorted(i.instance_id for i in candidates)


def test_random_is_seeded_and_covers_everyone() -> None:
    candidates = _instances(4)
    first = [Random(seed=7).select(candidates, REQ).instance_id for _ in range(1)]
    router_a, router_b = Random(seed=7), Random(seed=7)
    a = [router_a.select(candidates, REQ).instance_id for _ in range(400)]
    b = [router_b.select(candidates, REQ).instance_id for _ in range(400)]
    assert a == b
    assert a[:1] == first
    counts = Counter(a)
    assert set(counts) == {"i0", "i1", "i2", "i3"}
    assert min(counts.values()) > 50  # 100 expected each; far from a failure by chance


def test_direct_picks_the_named_instance_or_explains() -> None:
    candidates = _instances(3)
    chosen = Direct().select(candidates, RouteRequest(request_id="r", instance_id="i2"))
    assert chosen.instance_id == "i2"
    with pytest.raises(RoutingError, match="'i9' is not live; live instances: i0, i1, i2"):
        Direct().select(candidates, RouteRequest(request_id="r", instance_id="i9"))
    with pytest.raises(RoutingError, match="needs a target instance id"):
        Direct().select(candidates, REQ)


def test_round_robin_honours_an_explicit_target() -> None:
    chosen = RoundRobin().select(_instances(3), RouteRequest(request_id="r", instance_id="i1"))
    assert chosen.instance_id == "i1"


def test_names_resolve_with_hyphen_aliases() -> None:
    assert plugins.load("dyn.routers", "round-robin") is RoundRobin
    assert plugins.load("dyn.routers", "round_robin") is RoundRobin
    assert plugins.load("dyn.routers", "dyn.routing.simple:Random") is Random
    with pytest.raises(PluginError, match=r"unknown strategy 'kvv'; available: .*round_robin"):
        plugins.load("dyn.routers", "kvv")
