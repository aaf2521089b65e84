"""The simulation is the real code: a live graph and `dyn bench --sim` route alike.

graphs/kv_routing.yaml runs under `dyn up` with zero-time steps and a seeded kv (then
kv_latency) router;
a small shared-prefix workload is sent one request at a time, and the worker that served
each is read from the router's decision counter between requests. The simulator then
replays the same workload with the same worker settings and router seed.

Ties are the hard part: with nothing in flight, every worker without the prompt's prefix
costs the same, and the router draws among them from its seeded generator by position in
the candidate list. The live list is sorted by instance id (discovery keys), and the
simulated ids sort in worker order, so the i-th live worker in id order plays the part of
simulated worker i: same positions, same draws, same decisions. The test compares the
decisions under that mapping, and the partition of requests into workers, which needs no
mapping at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import anyio
import httpx
import pytest
from _dyn_graph import dyn_up, free_port

from dyn.bench.load import Server, Target
from dyn.bench.scrape import by_label, delta
from dyn.bench.sim import Simulator
from dyn.bench.sim_run import parse_timing, sim_setup, text_requests
from dyn.bench.workloads import SharedPrefix, Words, shared_prefix
from dyn.routing.kv.latency import KvLatencyRouter
from dyn.routing.kv.router import KvRouter
from dyn.tokenizer import load_tokenizer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
GRAPH = ROOT / "graphs" / "kv_routing.yaml"
SEED = 7
# More groups than workers, so several groups must share a worker and ties decide which.
SHAPE = SharedPrefix(groups=7, prompts_per_group=3, system_prompt_len=64, question_len=16)
OUTPUT_LEN = 8
ZERO = "fixed:0,0"


STRATEGIES = {"kv": KvRouter, "kv_latency": KvLatencyRouter}


@pytest.fixture(scope="module", params=sorted(STRATEGIES))
def strategy(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory, strategy: str) -> Iterator[str]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("bench_sim_live") / "up.log"
    sets = (
        "worker.timing={fixed: {prefill_ms: 0, decode_ms: 0}}",
        f"processor.strategy={strategy}",
        f"processor.seed={SEED}",
    )
    # The simulator models one router; the live graph must have one too (one process:
    # the auto layout would run a seeded router per front process, each drawing apart).
    with dyn_up(GRAPH, port, log_path, *sets, options=("--layout", "one-process")):
        yield f"http://127.0.0.1:{port}"


def live_decisions(base_url: str, words: Words) -> tuple[list[str], list[int]]:
    """The worker each request went to and its prompt tokens, one request at a time."""
    items = shared_prefix(replace(SHAPE, output_len=OUTPUT_LEN), words, SEED)

    async def main() -> tuple[list[str], list[int]]:
        workers, lengths = [], []
        async with Server(Target(base_url), 1) as server:
            for item in items:
                before = await server.scrape()
                result = await server.send(item, time.perf_counter())
                assert result.ok, result.error
                lengths.append(result.input_len)
                counts = by_label(
                    delta(before, await server.scrape()), "dyn_router_decisions_total", "worker"
                )
                (worker,) = [w for w, n in counts.items() if n]
                workers.append(worker)
        return workers, lengths

    return anyio.run(main)


def simulated_decisions(words: Words, strategy: str) -> tuple[list[str], list[int]]:
    setup, tokenizer = sim_setup(GRAPH, mocker={"timing": parse_timing(ZERO)})
    items = shared_prefix(replace(SHAPE, output_len=OUTPUT_LEN), words, SEED)
    router = STRATEGIES[strategy](None, seed=SEED)
    simulator = Simulator(setup.mocker, setup.workers, router, max_concurrency=1)
    run = simulator.run(text_requests(items, tokenizer))
    assert all(r.ok for r in run.results)
    return run.workers, [r.input_len for r in run.results]


def partition(workers: list[str]) -> set[frozenset[int]]:
    groups: dict[str, set[int]] = {}
    for index, worker in enumerate(workers):
        groups.setdefault(worker, set()).add(index)
    return {frozenset(g) for g in groups.values()}


def test_live_and_simulated_runs_route_every_request_alike(base_url: str, strategy: str) -> None:
    words = Words(load_tokenizer(None))
    live, live_lengths = live_decisions(base_url, words)
    simulated, sim_lengths = simulated_decisions(words, strategy)
    assert live_lengths == sim_lengths  # the same prompts, tokenized alike
    assert len(set(live)) > 1  # the workload spreads, so the comparison means something
    assert partition(live) == partition(simulated)
    instances = httpx.get(f"{base_url}/admin/route").json()["instances"]
    position = {worker: i for i, worker in enumerate(sorted(i["instance_id"] for i in instances))}
    assert [position[w] for w in live] == [int(w.removeprefix("sim-")) for w in simulated]
