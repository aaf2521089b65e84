"""Router replica sync: the message core, two kv routers sharing load, and the simulator's
figure for two processor replicas on the shared-prefix workload."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import pytest
from _instances import fake_instances
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dyn.bench.sim_run import SimSetup, simulate, text_requests
from dyn.bench.workloads import SharedPrefix, Words, shared_prefix
from dyn.cli.app import app
from dyn.engines.mocker import MockerConfig
from dyn.kv.hashing import local_block_hashes
from dyn.routing.base import RouteRequest
from dyn.routing.kv.approx import KvApproxRouter
from dyn.routing.kv.indexer import chain_keys
from dyn.routing.kv.router import KvRouter
from dyn.routing.kv.sync import ReplicaSync, SyncAdd, SyncBatch, SyncFree, SyncPrefillDone
from dyn.routing.kv.tracker import LoadTracker
from dyn.runtime import codec
from dyn.tokenizer import load_tokenizer

BS = 16
WORKERS = ["w0", "w1", "w2"]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def state(tracker: LoadTracker) -> dict[str, tuple[int, int, int, dict[int, int]]]:
    """Everything the cost function reads from a tracker, per worker."""
    return {
        w: (f.requests, f.prefill_tokens, f.extra_blocks, dict(f.refs))
        for w in tracker.workers
        if (f := tracker.flight(w)).requests
    }


class Emitter:
    """A router's own side: its tracker and its sync, fed as KvRouter feeds them."""

    def __init__(self, router_id: str = "a", epoch: int = 0) -> None:
        self.tracker = LoadTracker()
        self.sync = ReplicaSync(router_id, epoch=epoch)

    def add(self, rid: str, worker: str, local: list[int], extra: int, prefill: int) -> None:
        self.tracker.add(rid, worker, chain_keys(local), extra, prefill)
        self.sync.local_add(rid, worker, local, extra, prefill)

    def prefill_done(self, rid: str) -> None:
        self.tracker.prefill_done(rid)
        self.sync.local_prefill_done(rid)

    def free(self, rid: str) -> None:
        self.tracker.finish(rid)
        self.sync.local_free(rid)


# One operation on the emitter: (kind, request, worker, prompt blocks, extra, prefill);
# prompts share leading blocks so refs are counted more than once.
operation = st.tuples(
    st.sampled_from(["add", "add", "prefill", "free", "send"]),
    st.integers(0, 5),
    st.sampled_from(WORKERS),
    st.lists(st.integers(1, 3), max_size=4),
    st.integers(0, 1),
    st.integers(0, 200),
)


def run_ops(emitter: Emitter, ops: list[tuple[Any, ...]]) -> list[SyncBatch]:
    batches = []
    for kind, n, worker, blocks, extra, prefill in ops:
        rid = f"r{n}"
        if kind == "add":
            emitter.add(rid, worker, blocks, extra, prefill)
        elif kind == "prefill":
            emitter.prefill_done(rid)
        elif kind == "free":
            emitter.free(rid)
        else:
            batches.append(emitter.sync.take())
    batches.append(emitter.sync.take())
    return batches


# -- the core -----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(operation, max_size=40), replays=st.lists(st.integers(0, 50), max_size=8))
def test_a_peer_sees_exactly_the_senders_load_however_often_batches_arrive(
    ops: list[tuple[Any, ...]], replays: list[int]
) -> None:
    emitter = Emitter()
    batches = run_ops(emitter, ops)
    receiver = ReplicaSync("b", tracker=LoadTracker())
    assert receiver.tracker is not None
    for k, batch in enumerate(batches):
        receiver.apply(batch)
        receiver.apply(batch)  # a duplicate changes nothing
        for r in replays:  # nor does an old batch coming again
            receiver.apply(batches[r % (k + 1)])
    assert state(receiver.tracker) == state(emitter.tracker)


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(operation, max_size=40), lost=st.sets(st.integers(0, 40)))
def test_a_snapshot_repairs_whatever_was_lost(ops: list[tuple[Any, ...]], lost: set[int]) -> None:
    emitter = Emitter()
    batches = run_ops(emitter, ops)
    receiver = ReplicaSync("b", tracker=LoadTracker())
    assert receiver.tracker is not None
    for k, batch in enumerate(batches):
        if k not in lost:
            receiver.apply(batch)
    receiver.apply(emitter.sync.snapshot())
    assert state(receiver.tracker) == state(emitter.tracker)


def test_own_batches_are_ignored_and_peers_are_kept_apart() -> None:
    tracker = LoadTracker()
    sync = ReplicaSync("a", tracker=tracker)
    own = SyncBatch("a", 0, 1, [SyncAdd(1, "w0", [7], 0, 16)])
    assert sync.apply(own) is False
    assert tracker.workers == []
    sync.apply(SyncBatch("b", 0, 1, [SyncAdd(1, "w0", [7], 0, 16)]))
    sync.apply(SyncBatch("c", 0, 1, [SyncAdd(1, "w0", [7], 0, 16)]))  # same flight number
    assert tracker.flight("w0").requests == 2
    assert tracker.flight("w0").prefill_tokens == 32
    sync.apply(SyncBatch("b", 0, 2, [SyncPrefillDone(1), SyncFree(1)]))
    assert tracker.flight("w0").requests == 1
    assert sync.peers() == {"b": 0, "c": 1}


def test_a_new_epoch_replaces_the_old_and_asks_for_a_snapshot() -> None:
    tracker = LoadTracker()
    sync = ReplicaSync("a", tracker=tracker)
    assert sync.apply(SyncBatch("b", 1, 1, [SyncAdd(1, "w0", [7], 0, 16)])) is True  # new
    assert sync.apply(SyncBatch("b", 1, 2, [SyncAdd(2, "w1", [7], 0, 16)])) is False
    assert sync.apply(SyncBatch("b", 2, 1, [SyncAdd(1, "w2", [8], 0, 16)])) is True  # replaced
    assert state(tracker).keys() == {"w2"}
    sync.apply(SyncBatch("b", 1, 9, [SyncAdd(3, "w0", [9], 0, 16)]))  # from the old router
    assert state(tracker).keys() == {"w2"}


def test_a_peer_that_leaves_or_falls_silent_is_forgotten() -> None:
    clock, tracker = Clock(), LoadTracker()
    sync = ReplicaSync("a", tracker=tracker, clock=clock, peer_ttl_s=10)
    sync.apply(SyncBatch("b", 0, 1, [SyncAdd(1, "w0", [7], 0, 16)]))
    sync.apply(SyncBatch("c", 0, 1, [SyncAdd(1, "w1", [7], 0, 16)]))
    clock.now = 8
    sync.apply(SyncBatch("c", 0, 2))  # a heartbeat
    sync.drop_peer("nobody")
    clock.now = 12
    assert sync.expire() == ["b"]
    assert state(tracker).keys() == {"w1"}
    sync.drop_peer("c")
    assert tracker.workers == []
    assert sync.peers() == {}


def test_batches_survive_the_wire() -> None:
    batch = SyncBatch(
        "a", 3, 7, [SyncAdd(1, "w0", [2**64 - 1, 5], 1, 40), SyncPrefillDone(1), SyncFree(1)]
    )
    assert msgspec.convert(codec.decode(codec.encode(batch)), SyncBatch) == batch
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"router_id": "a", "epoch": 0, "seq": 1, "messages": [["x", 1]]}, SyncBatch)


def test_the_outbox_announces_itself_once() -> None:
    sync, calls = ReplicaSync("a"), []
    sync.on_pending = lambda: calls.append(1)
    sync.local_add("r", "w0", [1], 0, 16)
    sync.local_prefill_done("r")
    sync.local_prefill_done("r")  # once only
    assert calls == [1]
    assert sync.pending
    assert [type(m).__name__ for m in sync.take().messages] == ["SyncAdd", "SyncPrefillDone"]
    sync.local_free("r")
    sync.local_free("r")
    assert calls == [1, 1]
    assert len(sync.take().messages) == 1
    assert sync.in_flight == 0


# -- kv routers ---------------------------------------------------------------------------


def synced_pair(cls: type[KvRouter] = KvRouter) -> tuple[KvRouter, KvRouter]:
    a, b = cls(None, seed=1), cls(None, seed=2)
    a.enable_sync("a")
    b.enable_sync("b")
    return a, b


def exchange(*routers: KvRouter) -> None:
    for sender in routers:
        assert sender.sync is not None
        batch = sender.sync.take()
        for receiver in routers:
            if receiver is not sender and receiver.sync is not None:
                receiver.sync.apply(batch)


@pytest.mark.parametrize("cls", [KvRouter, KvApproxRouter])
def test_a_replica_follows_the_prefix_its_peer_has_in_flight(cls: type[KvRouter]) -> None:
    candidates = fake_instances(4, prefix="w", component="worker", block_size=BS)
    a, b = synced_pair(cls)
    prompt = list(range(8 * BS))
    first = RouteRequest("r1", tokens=[*prompt, 1, 2])
    chosen = a.select(candidates, first)
    a.on_routed(chosen, first)
    exchange(a, b)
    flight = b.tracker.flight(chosen.instance_id)
    assert flight.requests == 1
    assert flight.prefill_tokens == len(first.tokens)
    a.on_first_item(chosen, first)
    exchange(a, b)
    assert b.tracker.flight(chosen.instance_id).prefill_tokens == 0
    # No KV event yet: only the sync tells b that this prefix is held there.
    second = RouteRequest("r2", tokens=[*prompt, 3, 4])
    assert b.select(candidates, second).instance_id == chosen.instance_id
    a.on_finished(chosen, first)
    exchange(a, b)
    assert b.tracker.workers == []
    if cls is KvApproxRouter:  # the guessed cache outlives the request
        keys = chain_keys(local_block_hashes(prompt, BS))
        assert b.index.match_keys(keys) == {chosen.instance_id: 8}


# -- two processor replicas in virtual time -----------------------------------------------

# A burst of a shared-prefix workload: every prompt arrives at once, so nothing but the
# routers' in-flight tracking says where a prefix is already being computed.
# Workers as graphs/kv_routing.yaml's.
BURST = SharedPrefix(
    groups=32, prompts_per_group=8, system_prompt_len=512, question_len=64, output_len=64
)
SETUP = SimSetup(mocker=MockerConfig(block_size=BS, num_gpu_blocks=512), workers=4)


def cached_share(routers: int, sync: bool, seed: int) -> float:
    words = Words(load_tokenizer(None))
    requests = text_requests(shared_prefix(BURST, words, seed), load_tokenizer(None))
    setup = replace(SETUP, routers=routers, router_sync=sync)
    result = simulate(requests, setup, "kv", seed=seed)
    assert result["completed"] == len(requests)
    assert result["sim"]["routers"] == routers
    share: float = result["prefix_hit_rate"]
    return share


@pytest.mark.parametrize("seed", [0, 1])
def test_two_synced_replicas_reuse_as_much_as_one(seed: int) -> None:
    one = cached_share(1, True, seed)
    synced = cached_share(2, True, seed)
    unsynced = cached_share(2, False, seed)
    print(f"seed {seed}: cached share 1 router {one:.3f}, 2 synced {synced:.3f}, "
          f"2 unsynced {unsynced:.3f}")  # fmt: skip
    assert synced >= 0.9 * one


def test_sync_messages_may_arrive_late() -> None:
    words = Words(load_tokenizer(None))
    requests = text_requests(shared_prefix(BURST, words, 0), load_tokenizer(None))
    setup = replace(SETUP, routers=3, sync_delay_s=0.005)
    result = simulate(requests, setup, "kv", seed=0)
    assert result["completed"] == len(requests)
    assert result["sim"]["sync_delay_s"] == 0.005


def test_the_command_takes_router_replicas(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = ["bench", "--sim", "--workload", "shared-prefix", "--groups", "4"]
    args += ["--prompts-per-group", "4", "--system-prompt-len", "64", "--question-len", "16"]
    args += ["--output-len", "8", "--workers", "2", "--block-size", "16"]
    args += ["--router-replicas", "2", "--no-router-sync", "--save-result", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    sim = json.loads(out.read_text())["sim"]
    assert sim["routers"] == 2
    assert sim["router_sync"] is False
    wrong = CliRunner().invoke(app, ["bench", "--router-replicas", "2"])
    assert wrong.exit_code != 0
    assert "only apply with --sim" in wrong.output
