"""A client whose discovery suddenly lists nobody still calls instances that left
moments ago (an etcd that was paused revokes every lapsed lease at once), and forgets
one as soon as it fails or the grace period ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from dyn.context import Context
from dyn.discovery.memory import MemoryDiscovery
from dyn.errors import NoInstancesError, TransportError
from dyn.routing.simple import RoundRobin
from dyn.runtime.client import Client
from dyn.runtime.component import Component, EmptyConfig, endpoint
from dyn.runtime.runtime import Runtime, component_info
from dyn.transports.inproc import InprocTransport

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

BROKEN: set[str] = set()


class Echo(Component[EmptyConfig]):
    @endpoint
    async def generate(self, request: Any, ctx: Context) -> AsyncIterator[str]:
        if self.info.instance_id in BROKEN:
            raise TransportError("down")
        yield self.info.instance_id


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _call(client: Client) -> str:
    async with client.stream("generate", {}) as items:
        return str(await anext(items))


@pytest.fixture
async def unlisted() -> AsyncIterator[tuple[Client, Clock, str]]:
    """One instance that serves, but whose registration was just removed."""
    BROKEN.clear()
    discovery = MemoryDiscovery()
    async with Runtime(namespace="t", transport=InprocTransport(), discovery=discovery) as rt:
        component = Echo(EmptyConfig(), component_info("t", "echo"), {})
        await rt.serve_component(component)
        clock = Clock()
        client = Client(rt, "echo", RoundRobin(seed=0), clock=clock, departed_grace_s=10.0)
        rt.tasks.start_soon(client.watch)
        await client.wait_for_instances()
        for instance in await discovery.snapshot("t/echo/"):
            await discovery.deregister(instance)
        with anyio.fail_after(5):
            while client.instances():
                await client.changed()
        yield client, clock, component.info.instance_id


async def test_an_instance_that_just_left_still_answers(
    unlisted: tuple[Client, Clock, str],
) -> None:
    client, clock, instance_id = unlisted
    assert client.instances() == []
    assert await _call(client) == instance_id
    clock.now += 9.9
    assert await _call(client) == instance_id


async def test_it_is_forgotten_after_the_grace_period(
    unlisted: tuple[Client, Clock, str],
) -> None:
    client, clock, _ = unlisted
    clock.now += 10.0
    with pytest.raises(NoInstancesError):
        await _call(client)


async def test_it_is_forgotten_once_it_fails(unlisted: tuple[Client, Clock, str]) -> None:
    client, _, instance_id = unlisted
    BROKEN.add(instance_id)
    with pytest.raises(TransportError):
        await _call(client)
    BROKEN.clear()
    with pytest.raises(NoInstancesError):
        await _call(client)


async def test_no_fallback_while_anyone_is_registered() -> None:
    discovery = MemoryDiscovery()
    async with Runtime(namespace="t", transport=InprocTransport(), discovery=discovery) as rt:
        first = Echo(EmptyConfig(), component_info("t", "echo", 0), {})
        second = Echo(EmptyConfig(), component_info("t", "echo", 1), {})
        await rt.serve_component(first)
        await rt.serve_component(second)
        client = Client(rt, "echo", RoundRobin(seed=0))
        rt.tasks.start_soon(client.watch)
        await client.wait_for_instances(count=2)
        for instance in await discovery.snapshot("t/echo/"):
            if instance.instance_id == first.info.instance_id:
                await discovery.deregister(instance)
        with anyio.fail_after(5):
            while len(client.instances()) != 1:
                await client.changed()
        answers = {await _call(client) for _ in range(6)}
        assert answers == {second.info.instance_id}
