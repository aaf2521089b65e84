"""Clients are typed: mypy follows a request to its items (checked by ``nox -s typecheck``)."""

from __future__ import annotations

from typing import Any, assert_type

import anyio
import pytest

from dyn.contracts.demo import MULTINODE_GENERATE, MultinodeReply, MultinodeRequest
from dyn.contracts.engine import ENGINE_GENERATE, EngineOutput, EngineRequest
from dyn.discovery.memory import MemoryDiscovery
from dyn.roles.multinode import MultinodeWorker, MultinodeWorkerConfig
from dyn.runtime.client import Client, ResponseStream
from dyn.runtime.runtime import Runtime, component_info
from dyn.transports.inproc import InprocTransport
from dyn.transports.tcp import TcpTransport

pytestmark = pytest.mark.anyio


def test_stream_types_follow_the_ref() -> None:
    def typed(client: Client) -> None:
        request = EngineRequest(request_id="r", tokens=[1, 2], max_tokens=3)
        assert_type(client.stream(ENGINE_GENERATE, request), ResponseStream[EngineOutput])
        assert_type(client.stream("generate", {"any": "thing"}), ResponseStream[Any])

    assert callable(typed)


@pytest.mark.parametrize("transport", [InprocTransport, TcpTransport])
async def test_items_arrive_as_the_declared_type(transport: type[TcpTransport]) -> None:
    with anyio.fail_after(10):
        async with Runtime(
            namespace="t", transport=transport(), discovery=MemoryDiscovery()
        ) as runtime:
            worker = MultinodeWorker(
                MultinodeWorkerConfig(), component_info("t", "w", node="n1"), {}
            )
            await runtime.serve_component(worker)
            client = runtime.client("w")
            await client.wait_for_instances()
            request = MultinodeRequest(prompt="hi", request_id="r1")
            async with client.stream(MULTINODE_GENERATE, request) as items:
                got = [assert_type(item, MultinodeReply) async for item in items]
            assert got == [MultinodeReply(request_id="r1", text="hi_GeneratedBy_n1")]
            # By name, the same call yields plain data, as it always did.
            async with client.stream("generate", {"prompt": "hi", "request_id": "r1"}) as raw:
                plain = [item async for item in raw]
            assert plain == [{"request_id": "r1", "text": "hi_GeneratedBy_n1"}]
