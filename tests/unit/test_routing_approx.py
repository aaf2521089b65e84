"""kv_approx: routing decisions stand in for events, and expire."""

from __future__ import annotations

import pytest
from _instances import fake_instances

from dyn.discovery.base import Instance
from dyn.errors import RoutingError
from dyn.kv.events import KvCleared, KvEvent
from dyn.routing.base import RouteRequest
from dyn.routing.kv.approx import DEFAULT_TTL_S, KvApproxRouter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _workers(n: int) -> list[Instance]:
    return fake_instances(n, prefix="w", component="worker", block_size=16)


def _route(router: KvApproxRouter, rid: str, tokens: list[int]) -> str:
    request = RouteRequest(request_id=rid, tokens=tokens)
    chosen = router.select(_workers(3), request)
    router.on_routed(chosen, request)
    router.on_finished(chosen, request)
    return chosen.instance_id


def test_routed_blocks_count_as_cached_until_they_expire() -> None:
    clock = FakeClock()
    router = KvApproxRouter({"seed": 2}, clock=clock)
    prompt = list(range(64 * 16))
    first = _route(router, "a", prompt)
    assert router.index.block_count(first) == 64
    clock.now = DEFAULT_TTL_S - 1
    assert _route(router, "b", prompt) == first  # refreshed: lives until 2 * TTL - 1
    scores = router.explain(_workers(3), RouteRequest(request_id="c", tokens=prompt))
    assert {s.instance_id: s.overlap_blocks for s in scores}[first] == 64
    clock.now = 2 * DEFAULT_TTL_S - 1
    assert router.index.block_count(first) == 64
    router.explain(_workers(3), RouteRequest(request_id="c", tokens=prompt))
    assert router.index.block_count(first) == 0


def test_ttl_is_an_option_and_events_are_ignored() -> None:
    clock = FakeClock()
    router = KvApproxRouter({"ttl_s": 5}, clock=clock)
    first = _route(router, "a", list(range(32)))
    router.on_kv_event(first, KvEvent(1, KvCleared()))
    assert router.index.block_count(first) == 2
    clock.now = 5
    _route(router, "b", [9] * 8)
    assert router.index.block_count(first) == 0
    with pytest.raises(RoutingError, match="valid options: block_size, overlap_score_weight"):
        KvApproxRouter({"ttl": 5})


def test_workers_that_leave_are_forgotten() -> None:
    clock = FakeClock()
    router = KvApproxRouter(clock=clock)
    first = _route(router, "a", list(range(32)))
    router.on_instances([w.instance_id for w in _workers(3) if w.instance_id != first])
    assert router.index.block_count(first) == 0
    clock.now = 1000
    router.explain(_workers(3), RouteRequest(request_id="x", tokens=[1] * 32))  # no crash
