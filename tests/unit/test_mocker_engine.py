"""The mocker's async shell: streaming, cancellation, subscribers, real-time pacing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import anyio
import anyio.lowlevel
import pytest
from test_mocker_support import FAST, config, request

from dyn.engines.base import EngineOutput
from dyn.engines.mocker import MockerEngine
from dyn.engines.mocker import engine as engine_module
from dyn.kv.events import KvCleared, KvStored, WorkerUpdate

pytestmark = pytest.mark.anyio


async def collect(
    engine: MockerEngine, request_id: str, prompt: list[int], n: int
) -> list[EngineOutput]:
    return [output async for output in engine.generate(request(request_id, prompt, n))]


async def test_generate_streams_max_tokens_at_zero_cost() -> None:
    with anyio.fail_after(10):
        async with MockerEngine(config(**FAST)) as engine:
            results: dict[str, list[EngineOutput]] = {}

            async def one(k: int) -> None:
                results[f"r{k}"] = await collect(engine, f"r{k}", [k] * 100, 50)

            async with anyio.create_task_group() as tg:
                for k in range(20):
                    tg.start_soon(one, k)
    assert all(len(outputs) == 50 for outputs in results.values())
    assert all(outputs[-1].finish_reason == "length" for outputs in results.values())
    assert engine.prompt_tokens_total == 2000


async def test_polynomial_timing_paces_in_real_time() -> None:
    with anyio.fail_after(10):
        async with MockerEngine(config(speedup_ratio=10.0)) as engine:
            start = anyio.current_time()
            outputs = await collect(engine, "a", list(range(200)), 10)
            elapsed = anyio.current_time() - start
    assert len(outputs) == 10
    # 19.6 ms of prefill + 9 decodes of 5.7 ms = 71 ms, divided by 10.
    assert 0.0071 < elapsed < 1.0


async def test_zero_cost_steps_do_not_starve_other_tasks() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(10):
        async with MockerEngine(config(**FAST)) as engine, anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await collect(engine, "a", [1, 2, 3], 500)
            tg.cancel_scope.cancel()
    assert ticks > 100


async def test_closing_the_stream_cancels_and_frees_blocks() -> None:
    with anyio.fail_after(10):
        async with MockerEngine(config(block_size=16, speedup_ratio=1000.0)) as engine:
            async with aclosing(engine.generate(request("a", list(range(100)), 1000))) as stream:
                count = 0
                async for _ in stream:
                    count += 1
                    if count == 3:
                        assert engine.load().active_blocks > 0
                        break
            assert engine.load().active_blocks == 0
            assert engine.load().running == 0
            assert not engine.core.has_work()


async def test_generate_needs_a_running_engine() -> None:
    engine = MockerEngine(config(**FAST))
    assert not engine.running
    with pytest.raises(RuntimeError, match="async with engine"):
        await collect(engine, "a", [1], 1)


async def test_subscribe_starts_with_a_snapshot_then_follows_events() -> None:
    with anyio.fail_after(10):
        async with MockerEngine(config(block_size=4, **FAST)) as engine:
            await collect(engine, "warm", list(range(8)), 1)
            async with aclosing(engine.subscribe()) as updates:
                first = await anext(updates)
                assert first.snapshot
                assert first.load is not None
                assert isinstance(first.events[0].data, KvCleared)
                stored = [e.data for e in first.events if isinstance(e.data, KvStored)]
                assert sum(len(s.blocks) for s in stored) == 2
                last_id = first.events[0].event_id
                await collect(engine, "next", list(range(100, 112)), 1)
                seen: list[WorkerUpdate] = []
                while sum(len(u.events) for u in seen) < 1:
                    seen.append(await anext(updates))
                ids = [e.event_id for u in seen for e in u.events]
                assert ids == list(range(last_id + 1, last_id + 1 + len(ids)))
                assert not any(u.snapshot for u in seen)
                assert engine.clear_cache() == 5  # 2 blocks of "warm", 3 of "next"
                assert engine.clear_cache() == 0
                cleared = await anext(updates)
                assert [type(e.data) for e in cleared.events] == [KvCleared]


async def test_a_subscriber_that_falls_behind_gets_a_fresh_snapshot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine_module, "MAX_PENDING_EVENTS", 3)
    with anyio.fail_after(10):
        async with (
            MockerEngine(config(block_size=4, **FAST)) as engine,
            aclosing(engine.subscribe()) as updates,
        ):
            assert (await anext(updates)).snapshot
            for k in range(5):  # 5 stored events, more than 3, nobody reading
                await collect(engine, f"r{k}", [k] * 4, 1)
            again = await anext(updates)
            assert again.snapshot
            stored = [e.data for e in again.events if isinstance(e.data, KvStored)]
            assert sum(len(s.blocks) for s in stored) == 5


async def test_an_error_in_the_body_propagates_unwrapped() -> None:
    with anyio.fail_after(5), pytest.raises(KeyError, match="boom"):
        async with MockerEngine(config(**FAST)):
            raise KeyError("boom")


async def test_steps_that_change_neither_cache_nor_load_send_no_update() -> None:
    seen: list[WorkerUpdate] = []

    async def read(updates: AsyncIterator[WorkerUpdate]) -> None:
        async for update in updates:  # read as they come: nothing is coalesced
            seen.append(update)

    with anyio.fail_after(10):
        async with (
            MockerEngine(config(block_size=64, **FAST)) as engine,
            aclosing(engine.subscribe()) as updates,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(read, updates)
            await anyio.sleep(0.05)
            # 40 tokens in one 64-token block: admission and the end change the load,
            # the 39 decode steps between them change nothing a router sees.
            await collect(engine, "r", list(range(8)), 40)
            await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    assert seen[0].snapshot
    loads = [u.load for u in seen[1:] if u.load is not None]
    assert loads, "the load changed, so at least one update was sent"
    assert len(seen) <= 5
    assert loads[-1].running == 0
