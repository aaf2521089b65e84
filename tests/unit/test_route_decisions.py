"""The routing decision ring: bounded, newest first, the strategy's own plan kept."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dyn.discovery.base import Instance
from dyn.kv.events import KvEvent, KvStored, StoredBlock
from dyn.kv.hashing import local_block_hashes
from dyn.routing.base import RouteRequest
from dyn.routing.decisions import DecisionLog
from dyn.routing.kv.indexer import chain_keys
from dyn.routing.kv.latency import KvLatencyRouter
from dyn.routing.kv.router import KvRouter
from dyn.routing.least_loaded import LeastLoaded
from dyn.routing.simple import RoundRobin


def workers(n: int) -> list[Instance]:
    return [
        Instance(
            namespace="t",
            component="worker",
            endpoint="generate",
            instance_id=f"w{i}",
            address="inproc://t",
            transport="inproc",
            metadata={"block_size": 4},
        )
        for i in range(n)
    ]


def route(router: KvRouter | RoundRobin | LeastLoaded, request: RouteRequest) -> str:
    candidates = workers(3)
    chosen = router.select(candidates, request)
    router.on_routed(chosen, request)
    return chosen.instance_id


@given(size=st.integers(1, 20), count=st.integers(0, 100))
def test_the_ring_keeps_the_last_size_decisions_newest_first(size: int, count: int) -> None:
    clock = itertools.count()
    log = DecisionLog(size, clock=lambda: float(next(clock)))
    for i in range(count):
        log.record(f"r{i}", "w0", "round_robin")
    assert len(log) == min(size, count)
    assert log.recorded == count
    kept = [d.request_id for d in log.recent()]
    assert kept == [f"r{i}" for i in reversed(range(max(0, count - size), count))]
    assert [d.time for d in log.recent()] == sorted((d.time for d in log.recent()), reverse=True)
    assert len(log.recent(limit=3)) == min(3, size, count)


def test_a_log_keeps_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        DecisionLog(0)


def test_kv_records_the_plan_it_routed_with_without_copying() -> None:
    router = KvRouter({"temperature": 0.0}, seed=1)
    router.decisions = log = DecisionLog(4, clock=lambda: 12.5)
    tokens = list(range(12))
    # w1 holds the first two blocks of the prompt: the plan shows it, and the choice.
    local = local_block_hashes(tokens, 4)
    keys = chain_keys(local)
    blocks = [StoredBlock(k, h) for k, h in zip(keys[:2], local[:2], strict=True)]
    router.on_kv_event("w1", KvEvent(event_id=1, data=KvStored(parent_hash=None, blocks=blocks)))
    chosen = route(router, RouteRequest("req-1", tokens=tokens))
    assert chosen == "w1"
    (decision,) = log.recent()
    assert (decision.time, decision.request_id, decision.worker) == (12.5, "req-1", "w1")
    assert decision.strategy == "kv"
    row = decision.to_dict()
    scores = {s["worker"]: s for s in row["scores"]}
    assert set(scores) == {"w0", "w1", "w2"}
    assert scores["w1"]["overlap_blocks"] == 2
    assert scores["w0"]["overlap_blocks"] == 0
    assert scores["w1"]["cost"] < scores["w0"]["cost"]
    # What the router explains for the same state is what the decision kept.
    fresh = KvRouter({"temperature": 0.0})
    explained = fresh.explain(workers(3), RouteRequest("x", tokens=tokens))
    assert {s.instance_id: s.cost for s in explained}["w0"] == scores["w0"]["cost"]


def test_kv_latency_keeps_its_terms() -> None:
    router = KvLatencyRouter(seed=1)
    router.decisions = log = DecisionLog(4)
    route(router, RouteRequest("req-1", tokens=list(range(40)), extra={"max_tokens": 8}))
    (row,) = [d.to_dict() for d in log.recent()]
    assert row["strategy"] == "kv_latency"
    assert len(row["scores"]) == 3
    for score in row["scores"]:
        assert set(score["terms"]) == {"prefill_ms", "decode_ms", "harm_ms"}
        assert score["cost"] == pytest.approx(sum(score["terms"].values()))


@pytest.mark.parametrize("strategy", [RoundRobin, LeastLoaded])
def test_strategies_without_costs_record_the_choice_only(
    strategy: type[RoundRobin] | type[LeastLoaded],
) -> None:
    router = strategy()
    router.decisions = log = DecisionLog(8)
    chosen = [route(router, RouteRequest(f"r{i}")) for i in range(5)]
    rows = [d.to_dict() for d in log.recent()]
    assert [r["worker"] for r in rows] == list(reversed(chosen))
    assert all(r["scores"] is None and r["strategy"] == strategy.name for r in rows)


def test_recording_cost_does_not_grow_with_the_ring() -> None:
    """O(1) per request: the ring's length is fixed, the plan's lists are shared."""
    router = KvRouter(seed=3)
    router.decisions = log = DecisionLog(5)
    for i in range(50):
        route(router, RouteRequest(f"r{i}", tokens=list(range(i, i + 8))))
    assert len(log) == 5
    assert log.recorded == 50
    newest = log.recent()[0]
    assert isinstance(newest.workers, list)
    assert len(newest.workers) == 3
