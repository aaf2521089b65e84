"""Overload at the frontend or at a worker, and no workers: 429 or 503, both with
Retry-After, both fast; and repeated floods leave the admission queue within its bound
and the process's memory flat."""

from __future__ import annotations

import gc
import statistics
import time
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
import pytest
from _dyn_graph import free_port
from _inprocess import serve_graph
from _streams import KV_GRAPH, completion_body, prompts

from dyn.openai.admission import Admission
from dyn.roles.frontend import Frontend

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

MAX_INFLIGHT = 8
MAX_QUEUED = 4
# Generous for CI; the measured figures are printed.
FAST_S = 0.5


async def test_overload_at_4x_gets_200_or_429_and_every_accepted_request_completes() -> None:
    port = free_port()
    async with serve_graph(
        str(KV_GRAPH),
        f"frontend.port={port}",
        f"frontend.max_inflight={MAX_INFLIGHT}",
        f"frontend.max_queued={MAX_QUEUED}",
        "worker.speedup_ratio=10",
    ):
        clients = 4 * MAX_INFLIGHT
        texts = prompts(clients * 3, seed=3)
        statuses: list[int] = []
        refused_in: list[float] = []
        completed = 0
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits
        ) as http:

            async def one(text: str) -> None:
                nonlocal completed
                t0 = time.perf_counter()
                body = completion_body(text, 64)
                async with http.stream("POST", "/v1/completions", json=body) as resp:
                    raw = await resp.aread()
                statuses.append(resp.status_code)
                if resp.status_code == 429:
                    refused_in.append(time.perf_counter() - t0)
                    assert resp.headers["retry-after"] == "1"
                    assert resp.json()["error"]["type"] == "rate_limit_error"
                elif resp.status_code == 200:
                    assert raw.endswith(b"data: [DONE]\n\n")
                    assert b'"error"' not in raw
                    assert b'"completion_tokens":64' in raw
                    completed += 1

            async def client(i: int) -> None:
                for text in texts[i::clients]:
                    await one(text)

            async with anyio.create_task_group() as tasks:
                for i in range(clients):
                    tasks.start_soon(client, i)
    accepted = statuses.count(200)
    print(
        f"\n{len(statuses)} requests from {clients} clients against max_inflight "
        f"{MAX_INFLIGHT} + max_queued {MAX_QUEUED}: {accepted} accepted and completed, "
        f"{statuses.count(429)} refused with 429 in median "
        f"{statistics.median(refused_in) * 1000:.1f} ms, max {max(refused_in) * 1000:.1f} ms"
    )
    assert set(statuses) <= {200, 429}
    assert refused_in, "the frontend was never overloaded"
    assert completed == accepted
    assert max(refused_in) < FAST_S


FLOOD_ROUNDS = 4
# Generous: measured, RSS grows by under 1 MB after the first round and the number of
# objects the garbage collector tracks moves by under 100 either way. The rounds after
# the first send 288 requests: keeping 30 kB, or one object, per request fails.
RSS_GROWTH_BOUND_MB = 8.0
OBJECT_GROWTH_BOUND = 200


def _rss_mb() -> float:
    """This process's resident set (the whole graph runs in it), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_repeated_overload_keeps_the_queue_bounded_and_memory_flat() -> None:
    """The same graph flooded at 4x its bound, round after round: the admission queue
    never holds more than max_queued, in flight never more than max_inflight, and the
    process's RSS (frontend, processor and workers all live here) stops growing once
    the first round has warmed every cache and pool up."""
    port = free_port()
    async with serve_graph(
        str(KV_GRAPH),
        f"frontend.port={port}",
        f"frontend.max_inflight={MAX_INFLIGHT}",
        f"frontend.max_queued={MAX_QUEUED}",
        "worker.replicas=2",
        "worker.speedup_ratio=10",
    ) as launcher:
        (admission,) = [c.admission for _, c in launcher.components if isinstance(c, Frontend)]
        clients = 4 * MAX_INFLIGHT
        peak_queued = peak_active = 0
        rss: list[float] = []
        objects: list[int] = []
        statuses: list[int] = []
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits
        ) as http:

            async def one(text: str) -> None:
                body = completion_body(text, 16)
                async with http.stream("POST", "/v1/completions", json=body) as resp:
                    raw = await resp.aread()
                statuses.append(resp.status_code)
                if resp.status_code == 200:
                    assert raw.endswith(b"data: [DONE]\n\n")
                    assert b'"error"' not in raw

            async def client(texts: list[str]) -> None:
                for text in texts:
                    await one(text)

            async def sample(admission: Admission, stop: anyio.Event) -> None:
                nonlocal peak_queued, peak_active
                while not stop.is_set():
                    peak_queued = max(peak_queued, admission.queued)
                    peak_active = max(peak_active, admission.active)
                    await anyio.lowlevel.checkpoint()

            for round_ in range(FLOOD_ROUNDS):
                # Fresh prompts every round: a leak per request, not per prompt, shows.
                texts = prompts(clients * 3, seed=100 + round_)
                stop = anyio.Event()
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(sample, admission, stop)
                    async with anyio.create_task_group() as flood:
                        for i in range(clients):
                            flood.start_soon(client, texts[i::clients])
                    stop.set()
                assert admission.active == 0
                assert admission.queued == 0
                gc.collect()
                rss.append(_rss_mb())
                objects.append(len(gc.get_objects()))
    growth = max(rss[1:]) - rss[0]
    object_growth = max(objects[1:]) - objects[0]
    print(
        f"\n{FLOOD_ROUNDS} floods of {clients * 3} requests from {clients} clients against "
        f"max_inflight {MAX_INFLIGHT} + max_queued {MAX_QUEUED}: {statuses.count(200)} "
        f"accepted, {statuses.count(429)} refused; peak in flight {peak_active}, peak queued "
        f"{peak_queued}; RSS after each round "
        f"{', '.join(f'{mb:.1f}' for mb in rss)} MB (growth after round 1: {growth:+.1f} MB); "
        f"gc-tracked objects {', '.join(map(str, objects))} ({object_growth:+d})"
    )
    assert set(statuses) <= {200, 429}
    assert statuses.count(429), "the frontend was never overloaded"
    assert peak_queued == MAX_QUEUED, "the queue never filled, or held more than its bound"
    assert peak_active == MAX_INFLIGHT
    assert growth < RSS_GROWTH_BOUND_MB
    assert object_growth < OBJECT_GROWTH_BOUND


WORKER_SEQS = 2
WORKER_QUEUED = 2


async def test_worker_over_max_queued_refuses_at_once_and_the_frontend_answers_429() -> None:
    port = free_port()
    async with serve_graph(
        str(KV_GRAPH),
        f"frontend.port={port}",
        "worker.replicas=2",
        f"worker.max_num_seqs={WORKER_SEQS}",
        f"worker.max_queued={WORKER_QUEUED}",
        "worker.speedup_ratio=10",
    ):
        # No bound at the frontend: every refusal here comes from a worker.
        clients = 4 * 2 * (WORKER_SEQS + WORKER_QUEUED)
        texts = prompts(clients * 2, seed=5)
        statuses: list[int] = []
        refused_in: list[float] = []
        completed = 0
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits
        ) as http:

            async def one(text: str) -> None:
                nonlocal completed
                t0 = time.perf_counter()
                body = completion_body(text, 32, stream=False, stream_options=None)
                resp = await http.post("/v1/completions", json=body)
                statuses.append(resp.status_code)
                if resp.status_code == 429:
                    refused_in.append(time.perf_counter() - t0)
                    assert resp.headers["retry-after"] == "1"
                    error = resp.json()["error"]
                    assert error["code"] == "overloaded"
                    assert "queued" in error["message"]
                elif resp.status_code == 200:
                    assert resp.json()["usage"]["completion_tokens"] == 32
                    completed += 1

            async def client(i: int) -> None:
                for text in texts[i::clients]:
                    await one(text)

            async with anyio.create_task_group() as tasks:
                for i in range(clients):
                    tasks.start_soon(client, i)
            # Nothing is left held at the workers once the flood is over.
            body = completion_body("after", 8, stream=False, stream_options=None)
            again = await http.post("/v1/completions", json=body)
            assert again.status_code == 200
    accepted = statuses.count(200)
    print(
        f"\n{len(statuses)} requests from {clients} clients against 2 workers with "
        f"max_num_seqs {WORKER_SEQS} + max_queued {WORKER_QUEUED}: {accepted} accepted and "
        f"completed, {statuses.count(429)} refused with 429 in median "
        f"{statistics.median(refused_in) * 1000:.1f} ms, max {max(refused_in) * 1000:.1f} ms"
    )
    assert set(statuses) <= {200, 429}
    assert refused_in, "no worker was ever over its bound"
    assert completed == accepted
    assert max(refused_in) < FAST_S


async def test_no_workers_is_503_with_retry_after_fast() -> None:
    port = free_port()
    async with serve_graph(str(KV_GRAPH), f"frontend.port={port}", "worker.replicas=1") as launcher:
        assert launcher.runtime is not None
        for spec, component in launcher.components:
            if spec.name == "worker":
                await launcher.runtime.withdraw_component(component)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            with anyio.fail_after(5):  # until the processor has seen the workers go
                body = completion_body("warm", 8)
                while (await http.post("/v1/completions", json=body)).status_code != 503:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            took: list[float] = []
            for text in prompts(10, seed=4):
                t0 = time.perf_counter()
                resp = await http.post("/v1/completions", json=completion_body(text, 8))
                took.append(time.perf_counter() - t0)
                assert resp.status_code == 503
                assert resp.headers["retry-after"] == "1"
                assert resp.json()["error"]["code"] == "unavailable"
    print(f"\nno workers: 503 in median {statistics.median(took) * 1000:.1f} ms")
    assert max(took) < FAST_S
