"""least_loaded: fewest requests in flight, then reported blocks, then a seeded draw."""

from __future__ import annotations

from collections import Counter

import pytest
from _instances import fake_instances
from hypothesis import given
from hypothesis import strategies as st

from dyn.discovery.base import Instance
from dyn.errors import RoutingError
from dyn.kv.events import WorkerLoad
from dyn.routing.base import RouteRequest
from dyn.routing.least_loaded import LeastLoaded


def _workers(n: int) -> list[Instance]:
    return fake_instances(n)


def _send(router: LeastLoaded, candidates: list[Instance], rid: str) -> Instance:
    request = RouteRequest(request_id=rid)
    chosen = router.select(candidates, request)
    router.on_routed(chosen, request)
    return chosen


@given(workers=st.integers(1, 8), requests=st.integers(1, 60))
def test_in_flight_counts_never_differ_by_more_than_one(workers: int, requests: int) -> None:
    router = LeastLoaded(seed=1)
    candidates = _workers(workers)
    counts = Counter(_send(router, candidates, f"r{i}").instance_id for i in range(requests))
    assert max(counts.values()) - min(counts.get(c.instance_id, 0) for c in candidates) <= 1


def test_finished_requests_free_their_instance() -> None:
    router = LeastLoaded(seed=0)
    candidates = _workers(2)
    a = _send(router, candidates, "a")
    b = _send(router, candidates, "b")
    assert a != b
    router.on_finished(a, RouteRequest(request_id="a"))
    router.on_finished(a, RouteRequest(request_id="a"))  # twice: counted once
    assert _send(router, candidates, "c") == a
    assert router.describe()[a.instance_id]["requests"] == 1


def test_ties_go_to_fewer_reported_blocks_then_random() -> None:
    candidates = _workers(3)
    router = LeastLoaded(seed=0)
    router.on_load("i0", WorkerLoad(50, 100, 0, 1, 0.0))
    router.on_load("i1", WorkerLoad(10, 100, 0, 1, 0.0))
    router.on_load("i2", WorkerLoad(30, 100, 0, 1, 0.0))
    assert router.select(candidates, RouteRequest(request_id="r")).instance_id == "i1"
    scores = router.explain(candidates, RouteRequest(request_id="r"))
    assert [s.chosen for s in scores] == [False, True, False]
    picks = {
        LeastLoaded(seed=s).select(candidates, RouteRequest(request_id="r")).instance_id
        for s in range(20)
    }
    assert picks == {"i0", "i1", "i2"}  # no reports: a fair random tie-break


def test_options_and_membership() -> None:
    with pytest.raises(RoutingError, match="valid options: seed"):
        LeastLoaded({"foo": 1})
    router = LeastLoaded()
    candidates = _workers(2)
    busy = _send(router, candidates, "a").instance_id
    router.on_instances([c.instance_id for c in candidates if c.instance_id != busy])
    assert router.describe() == {}
