"""Ejecting instances whose calls keep failing, and letting them back after a back-off."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dyn.context import Context
from dyn.discovery.memory import MemoryDiscovery
from dyn.errors import TransportError
from dyn.routing.simple import RoundRobin
from dyn.runtime.client import Client, EjectionPolicy
from dyn.runtime.component import Component, EmptyConfig, endpoint
from dyn.runtime.runtime import Runtime, component_info
from dyn.transports.inproc import InprocTransport

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

BROKEN: set[str] = set()  # instance ids that fail on purpose
CALLS: Counter[str] = Counter()


class Flaky(Component[EmptyConfig]):
    """Answers with its instance id, or fails as an unreachable instance would."""

    @endpoint
    async def generate(self, request: Any, ctx: Context) -> AsyncIterator[str]:
        me = self.info.instance_id
        CALLS[me] += 1
        if me in BROKEN:
            raise TransportError(f"{me} is down")
        yield me


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _call(client: Client) -> str | None:
    try:
        async with client.stream("generate", {}) as items:
            return str(await anext(items))
    except TransportError:
        return None


@pytest.fixture
async def setup() -> AsyncIterator[tuple[Client, Clock, str, str]]:
    BROKEN.clear()
    CALLS.clear()
    async with Runtime(
        namespace="t", transport=InprocTransport(), discovery=MemoryDiscovery()
    ) as rt:
        ids = []
        for replica in range(2):
            component = Flaky(EmptyConfig(), component_info("t", "flaky", replica), {})
            await rt.serve_component(component)
            ids.append(component.info.instance_id)
        clock = Clock()
        policy = EjectionPolicy(failures=3, base_s=5.0, max_s=12.0)
        client = Client(rt, "flaky", RoundRobin(seed=0), ejection=policy, clock=clock)
        rt.tasks.start_soon(client.watch)
        await client.wait_for_instances(count=2)
        yield client, clock, ids[0], ids[1]


async def test_failing_instance_is_ejected_then_retried(
    setup: tuple[Client, Clock, str, str],
) -> None:
    client, clock, bad, good = setup
    BROKEN.add(bad)
    results = [await _call(client) for _ in range(6)]
    # Round robin alternates: the bad instance fails three times, then is ejected.
    assert results.count(None) == 3
    assert results.count(good) == 3
    assert client.ejected() == {bad: 5.0}
    CALLS.clear()
    assert [await _call(client) for _ in range(10)] == [good] * 10
    assert CALLS[bad] == 0
    clock.now += 2.0
    assert client.ejected() == {bad: 3.0}

    # Back-off over: it is tried again; one failure on probation ejects it for twice as long.
    clock.now += 3.0
    assert client.ejected() == {}
    results = [await _call(client) for _ in range(2)]
    assert None in results
    assert CALLS[bad] == 1
    assert client.ejected() == {bad: 10.0}
    # Doubling stops at max_s.
    clock.now += 10.0
    [await _call(client) for _ in range(2)]
    assert client.ejected() == {bad: 12.0}

    # Recovered: the next call after the back-off succeeds and clears the record.
    BROKEN.clear()
    clock.now += 12.0
    assert {await _call(client) for _ in range(2)} == {bad, good}
    assert client.ejected() == {}
    # A single failure later counts from zero again (no probation left over).
    BROKEN.add(bad)
    [await _call(client) for _ in range(2)]
    assert client.ejected() == {}


async def test_ejected_instances_are_used_when_none_is_left(
    setup: tuple[Client, Clock, str, str],
) -> None:
    client, _clock, bad, good = setup
    BROKEN.update((bad, good))
    for _ in range(6):
        assert await _call(client) is None
    assert set(client.ejected()) == {bad, good}
    CALLS.clear()
    # Every instance ejected: calls still go out rather than failing with no instance.
    assert await _call(client) is None
    assert sum(CALLS.values()) == 1


async def test_a_success_resets_the_count(setup: tuple[Client, Clock, str, str]) -> None:
    client, _clock, bad, _good = setup
    for _ in range(10):
        BROKEN.add(bad)
        [await _call(client) for _ in range(4)]  # two failures of bad
        BROKEN.clear()
        [await _call(client) for _ in range(2)]
    assert client.ejected() == {}


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="base_s"):
        EjectionPolicy(base_s=10.0, max_s=5.0)
    with pytest.raises(ValueError, match="failures"):
        EjectionPolicy(failures=-1)
