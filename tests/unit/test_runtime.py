"""The runtime over the in-process transport: calls, errors, cancellation, deadlines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
import pytest

from dyn.context import Context
from dyn.contracts.base import Text
from dyn.contracts.demo import HELLO_GENERATE, HelloRequest
from dyn.discovery.memory import MemoryDiscovery
from dyn.errors import DeadlineExceeded, NoInstancesError, RemoteError, TransportError
from dyn.roles.hello import Backend, BackendConfig, Middle, MiddleConfig
from dyn.runtime.client import Client
from dyn.runtime.component import Component, EmptyConfig, depends, endpoint
from dyn.runtime.runtime import Runtime, component_info
from dyn.transports.inproc import InprocTransport

pytestmark = pytest.mark.anyio


class Probe:
    """Records what the far side of a call saw."""

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.cancelled = anyio.Event()
        self.ctx: Context | None = None


PROBES: dict[str, Probe] = {}


class Ticker(Component[EmptyConfig]):
    """Yields forever, slowly; records when it gets cancelled."""

    @endpoint
    async def generate(self, request: Any, ctx: Context) -> AsyncIterator[int]:
        probe = PROBES[request["probe"]]
        probe.ctx = ctx
        probe.started.set()
        try:
            for i in range(1_000_000):
                yield i
                await anyio.sleep(0.01)
        finally:
            # Stopped from outside: a cancellation at an await, or the generator closed
            # at a yield; either way it ends early and ctx says so.
            if ctx.cancelled:
                probe.cancelled.set()

    @endpoint
    async def fail(self, request: Any, ctx: Context) -> AsyncIterator[int]:
        yield 1
        raise ValueError("the handler broke")


class Relay(Component[EmptyConfig]):
    """Forwards to a ticker, so cancellation must cross two hops."""

    ticker = depends()

    @endpoint
    async def generate(self, request: Any, ctx: Context) -> AsyncIterator[int]:
        probe = PROBES[request["relay_probe"]]
        probe.started.set()
        try:
            async for item in self.ticker.stream("generate", request):
                yield item
        finally:
            if ctx.cancelled:
                probe.cancelled.set()


async def _serve(rt: Runtime, cls: type[Component[Any]], name: str, **clients: str) -> Any:
    wired = {slot: rt.client(target) for slot, target in clients.items()}
    component = cls(cls.config_type(), component_info(rt.namespace, name), wired)
    await rt.serve_component(component)
    for client in wired.values():
        await client.wait_for_instances()
    return component


async def _collect(
    client: Client,
    endpoint: str,
    request: Any,
    headers: dict[str, str] | None = None,
    *,
    into: list[Any] | None = None,
) -> list[Any]:
    """The stream's items; ``into`` keeps those that arrived before the stream failed."""
    got = [] if into is None else into
    async with client.stream(endpoint, request, headers=headers) as items:
        async for item in items:
            got.append(item)
    return got


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    async with Runtime(
        namespace="t", transport=InprocTransport(), discovery=MemoryDiscovery()
    ) as rt:
        yield rt


async def test_hello_pipeline(runtime: Runtime) -> None:
    backend = Backend(BackendConfig(), component_info("t", "backend"), {})
    await runtime.serve_component(backend)
    middle = Middle(
        MiddleConfig(), component_info("t", "middle"), {"backend": runtime.client("backend")}
    )
    await runtime.serve_component(middle)
    await middle.backend.wait_for_instances()
    client = runtime.client("middle")
    await client.wait_for_instances()
    async with client.stream(HELLO_GENERATE, HelloRequest("hello world")) as items:
        got = [item async for item in items]
    assert got == [Text("Middle: Backend: hello"), Text("Middle: Backend: world-mid-back")]


async def test_handler_exception_arrives_typed(runtime: Runtime) -> None:
    await _serve(runtime, Ticker, "ticker")
    client = runtime.client("ticker")
    await client.wait_for_instances("fail")
    got: list[Any] = []
    with pytest.raises(RemoteError, match="ValueError: the handler broke"):
        await _collect(client, "fail", {}, into=got)
    assert got == [1]


async def test_bad_request_error_keeps_its_type(runtime: Runtime) -> None:
    from dyn.errors import BadRequestError

    await _serve(runtime, Backend, "backend")
    client = runtime.client("backend")
    await client.wait_for_instances()
    with pytest.raises(BadRequestError, match="generate: Object missing required field `text`"):
        await _collect(client, "generate", {"txt": 1})


async def test_cancellation_reaches_handler_through_two_hops(runtime: Runtime) -> None:
    PROBES["leaf"], PROBES["relay"] = Probe(), Probe()
    await _serve(runtime, Ticker, "ticker")
    await _serve(runtime, Relay, "relay", ticker="ticker")
    client = runtime.client("relay")
    await client.wait_for_instances()
    with anyio.fail_after(5):
        async with client.stream("generate", {"probe": "leaf", "relay_probe": "relay"}) as items:
            async for item in items:
                if item == 3:
                    break
        await PROBES["relay"].cancelled.wait()
        await PROBES["leaf"].cancelled.wait()


async def test_deadline_stops_both_sides(runtime: Runtime) -> None:
    PROBES["slow"] = Probe()
    await _serve(runtime, Ticker, "ticker")
    client = runtime.client("ticker")
    await client.wait_for_instances()
    with anyio.fail_after(5):
        with pytest.raises(DeadlineExceeded):
            await _collect(client, "generate", {"probe": "slow"}, {"dyn-timeout": "0.2"})
        await PROBES["slow"].cancelled.wait()
    assert PROBES["slow"].ctx is not None
    assert PROBES["slow"].ctx.deadline < float("inf")


async def test_request_id_and_deadline_propagate(runtime: Runtime) -> None:
    PROBES["leaf2"], PROBES["relay2"] = Probe(), Probe()
    await _serve(runtime, Ticker, "ticker")
    await _serve(runtime, Relay, "relay", ticker="ticker")
    client = runtime.client("relay")
    await client.wait_for_instances()
    headers = {"x-request-id": "req-42", "dyn-timeout": "30"}
    async with client.stream(
        "generate", {"probe": "leaf2", "relay_probe": "relay2"}, headers=headers
    ) as items:
        await anext(items)
    leaf = PROBES["leaf2"].ctx
    assert leaf is not None
    assert leaf.request_id == "req-42"
    assert 0 < leaf.remaining() <= 30


async def test_no_instances_is_a_clear_error(runtime: Runtime) -> None:
    client = runtime.client("nobody")
    with pytest.raises(NoInstancesError, match="no live instance of nobody/generate"):
        async with client.stream("generate", {}) as items:
            await anext(items)


async def test_server_gone_mid_stream_is_a_transport_error() -> None:
    PROBES["gone"] = Probe()
    discovery = MemoryDiscovery()
    transport = InprocTransport()
    async with Runtime(namespace="t", transport=transport, discovery=discovery) as caller:
        client = caller.client("ticker")
        with anyio.fail_after(5):
            async with Runtime(namespace="t", transport=transport, discovery=discovery) as server:
                await _serve(server, Ticker, "ticker")
                await client.wait_for_instances()
                items = client.stream("generate", {"probe": "gone"})
                await anext(items)
            # the server's runtime is gone: the stream must fail, not hang
            with pytest.raises(TransportError):
                async for _ in items:
                    pass


async def test_withdrawn_component_leaves_discovery(runtime: Runtime) -> None:
    ticker = await _serve(runtime, Ticker, "ticker")
    assert len(await runtime.discovery.snapshot("t/ticker/")) == 2  # generate + fail
    await runtime.withdraw_component(ticker)
    assert await runtime.discovery.snapshot("t/ticker/") == []


class Cfg(msgspec.Struct, frozen=True):
    greeting: str = "hi"


class Configured(Component[Cfg]):
    @endpoint
    async def generate(self, request: Any, ctx: Context) -> AsyncIterator[str]:
        yield self.config.greeting


def test_config_type_comes_from_the_type_argument() -> None:
    assert Configured.config_type is Cfg
    assert Ticker.config_type is EmptyConfig
    assert Relay.dependency_slots().keys() == {"ticker"}
    assert list(Ticker.endpoints()) == ["generate", "fail"]
