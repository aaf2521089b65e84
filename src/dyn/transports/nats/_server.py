"""The serving side of the nats transport: one subscription per server, a task per call.

Requests arrive on ``dyn.call.ID.>``; each runs its handler in a task of its own and
sends its frames to the request's reply inbox, no more data frames than the caller has
granted. Credit grants and cancels arrive on ``dyn.ctl.ID``. A request that breaks the
protocol is answered with a ``protocol`` error (when it has an inbox) or dropped: it
never affects another call.

Each component the server hosts also has a queue-group subscription,
``dyn.any.<namespace>.<component>.>``: NATS hands each request there to one member of
the group, which opens its answer with an accept frame naming itself.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError

from dyn.context import Context
from dyn.errors import DynError, ProtocolError, RemoteError, TransportError
from dyn.transports._serving import ReplyFrame, error_to_wire, run_handler
from dyn.transports.base import Handler
from dyn.transports.nats import _wire as w

__all__ = ["NatsServer"]

log = logging.getLogger("dyn.transports.nats")

# How long a member that left a queue group still serves the requests NATS routed to it
# before it took the unsubscribe (see _leave).
LEAVE_GRACE_S = 0.25


@dataclass(eq=False)
class _Call:
    inbox: str
    ctx: Context
    credit: int
    path: str  # the endpoint instance's path
    sent: int = 0  # data frames published
    granted: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    last_sent: float = field(default_factory=time.monotonic)
    # Set once its task runs: the handler has its endpoint from then on, even if the
    # instance is withdrawn (calls admitted before a withdrawal run on).
    started: anyio.Event = field(default_factory=anyio.Event)


@dataclass(eq=False)
class _Group:
    """The instances of one component this server hosts, taking calls to its queue group
    by turns."""

    subscriptions: list[Subscription]
    instances: list[str] = field(default_factory=list)
    turn: int = 0

    def next_instance(self) -> str:
        self.turn = (self.turn + 1) % len(self.instances)
        return self.instances[self.turn]


class NatsServer:
    def __init__(
        self, client: Client, sid: str, handler: Handler, protocol_version: int, tasks: TaskGroup
    ) -> None:
        self.client = client
        self.sid = sid
        self.handler = handler
        self.protocol_version = protocol_version
        self.tasks = tasks
        self.calls: dict[str, _Call] = {}
        self.groups: dict[tuple[str, str], _Group] = {}
        self._grouping = anyio.Lock()

    async def expose(self, namespace: str, component: str, instance_id: str) -> None:
        """Join ``component``'s queue group (once per component) with ``instance_id``."""
        async with self._grouping:
            group = self.groups.get((namespace, component))
            if group is not None:
                if instance_id not in group.instances:
                    group.instances.append(instance_id)
                return
            # Known before the subscription exists: NATS hands it requests at once.
            group = self.groups[namespace, component] = _Group([], [instance_id])
            try:
                group.subscriptions.append(
                    await self.client.subscribe(
                        w.group_wildcard(namespace, component),
                        queue=w.group_queue(namespace, component),
                        cb=self._on_group_request,
                    )
                )
                group.subscriptions.append(
                    await self.client.subscribe(
                        w.group_control_subject(namespace, component), cb=self._on_control
                    )
                )
                await self.client.flush()  # a member before the instance is announced
            except BaseException:
                del self.groups[namespace, component]
                with anyio.CancelScope(shield=True):
                    await _drain(group.subscriptions)
                raise

    async def withdraw(self, namespace: str, component: str, instance_id: str) -> None:
        """Stop giving group calls to ``instance_id``; leave the group with the component's
        last instance here. Calls admitted before run on."""
        async with self._grouping:
            group = self.groups.get((namespace, component))
            if group is None or instance_id not in group.instances:
                return
            if len(group.instances) == 1:
                # Requests NATS sent before it took the unsubscribe are still served
                # (by this instance, still listed): none is dropped unanswered.
                await _leave(self.client, group.subscriptions)
                del self.groups[namespace, component]
            else:
                group.instances.remove(instance_id)
            # Until every call admitted so far has its endpoint (the runtime removes the
            # instance's endpoints once this returns); bounded, should one never start.
            with anyio.move_on_after(w.KEEPALIVE_S):
                for call in list(self.calls.values()):
                    await call.started.wait()

    async def subscribe(self) -> None:
        await self.client.subscribe(w.call_wildcard(self.sid), cb=self._on_request)
        await self.client.subscribe(w.control_subject(self.sid), cb=self._on_control)
        await self.client.flush()  # subscribed at the server before the address is given out

    async def keepalives(self) -> None:
        """Tell callers of quiet calls (a slow handler, a reader out of credit) that this
        server still lives."""
        while True:
            await anyio.sleep(w.KEEPALIVE_S / 2)
            now = time.monotonic()
            for call in list(self.calls.values()):
                if now - call.last_sent >= w.KEEPALIVE_S:
                    call.last_sent = now
                    await self._publish(
                        call.inbox, b"", {w.H_FRAME: "keepalive", w.H_SENT: str(call.sent)}
                    )

    async def _on_request(self, msg: Msg) -> None:
        inbox = msg.reply
        headers = msg.headers or {}
        path = headers.get(w.H_PATH)
        if not inbox or inbox in self.calls:
            return  # nowhere to answer (or a duplicate): nothing to run
        if path is not None and msg.subject != w.call_subject(self.sid, path):
            # The path must be the one the subject names: NATS permissions on subjects
            # then also hold for paths.
            await self._error(inbox, ProtocolError(f"path {path!r} sent on {msg.subject}"))
            return
        call = await self._admit(inbox, path, headers)
        if call is not None:
            self._start(call, msg.data)

    async def _on_group_request(self, msg: Msg) -> None:
        """A call to the component's queue group: run it on one of the component's
        instances here, after telling the caller which server took it."""
        inbox = msg.reply
        headers = msg.headers or {}
        if not inbox or inbox in self.calls:
            return
        path = headers.get(w.H_PATH, "")
        try:
            namespace, component, _ = w.group_path(path)
        except ValueError as exc:
            await self._error(inbox, ProtocolError(str(exc)))
            return
        if msg.subject != w.group_subject(path):
            await self._error(inbox, ProtocolError(f"path {path!r} sent on {msg.subject}"))
            return
        group = self.groups.get((namespace, component))
        if group is None:  # cannot happen while withdraw drains first; never a hang
            await self._error(inbox, TransportError(f"nats:{self.sid} no longer hosts {path}"))
            return
        # The instance is picked and the call admitted before anything is awaited; its
        # task starts after the accept frame is queued, so the accept comes first.
        call = await self._admit(inbox, f"{path}/{group.next_instance()}", headers)
        if call is not None:
            await self._publish(inbox, b"", {w.H_FRAME: "accept", w.H_SERVER: self.sid})
            self._start(call, msg.data)

    async def _admit(self, inbox: str, path: str | None, headers: dict[str, str]) -> _Call | None:
        """The call, registered, if the request is well formed; else answer with an error."""
        try:
            credit = int(headers.get(w.H_CREDIT, ""))
            version = int(headers.get(w.H_VERSION, ""))
        except ValueError:
            credit = version = -1
        if path is None or credit < 1:
            await self._error(inbox, ProtocolError("malformed nats request: no path or credit"))
            return None
        if version != self.protocol_version:
            await self._error(
                inbox,
                ProtocolError(
                    f"server at nats:{self.sid} speaks dyn nats protocol version "
                    f"{self.protocol_version}; this caller speaks version {version}"
                ),
            )
            return None
        call_headers = {
            k[len(w.H_PREFIX) :]: v for k, v in headers.items() if k.startswith(w.H_PREFIX)
        }
        call = _Call(inbox, Context.from_headers(call_headers), credit, path)
        self.calls[inbox] = call
        return call

    def _start(self, call: _Call, payload: bytes) -> None:
        self.tasks.start_soon(self._run, call, payload)

    async def _on_control(self, msg: Msg) -> None:
        headers = msg.headers or {}
        call = self.calls.get(headers.get(w.H_CALL, ""))
        if call is None:
            return  # finished already, or never ours
        op = headers.get(w.H_OP)
        if op == "cancel":
            call.ctx.cancel()
            call.scope.cancel()
        elif op == "credit":
            try:
                more = int(headers.get(w.H_CREDIT, ""))
            except ValueError:
                more = 0
            if 0 < more <= 1 << 20:
                call.credit += more
                call.granted.set()

    async def _run(self, call: _Call, payload: bytes) -> None:
        call.started.set()

        async def send(frame: ReplyFrame) -> None:
            kind, body, message = frame
            if kind == "data":
                while call.credit <= 0:
                    call.granted = anyio.Event()
                    await call.granted.wait()
                call.credit -= 1
                data = body if isinstance(body, bytes) else body.encode()
                # Counted before the publish, which queues the frame before it may wait: a
                # keepalive sent meanwhile then counts it too. One that fails to go out
                # counts as lost.
                call.sent += 1
                try:
                    await self._publish(
                        call.inbox, data, None, raise_too_large=True, number=call.sent
                    )
                except MaxPayloadError:
                    call.sent -= 1  # refused before it was queued
                    raise RemoteError(
                        f"an item of {len(data)} bytes is larger than the NATS server's max_payload"
                    ) from None
            elif kind == "end":
                await self._publish(call.inbox, b"", {w.H_FRAME: "end", w.H_SENT: str(call.sent)})
            else:
                code = body if isinstance(body, str) else body.decode()
                await self._publish(
                    call.inbox, message.encode(), {w.H_FRAME: "error", w.H_CODE: code}
                )
            call.last_sent = time.monotonic()

        try:
            with call.scope:
                await run_handler(self.handler, call.path, payload, call.ctx, send)
        finally:
            self.calls.pop(call.inbox, None)

    async def _error(self, inbox: str, error: DynError) -> None:
        code, message = error_to_wire(error)
        await self._publish(inbox, message.encode(), {w.H_FRAME: "error", w.H_CODE: code})

    async def _publish(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str] | None,
        *,
        raise_too_large: bool = False,
        number: int = 0,
    ) -> None:
        # A data frame's number (1, 2, ...) rides in its reply field: free to send and to
        # read, unlike a header, and the caller never replies to a reply frame.
        reply = str(number) if number else ""
        try:
            await self.client.publish(subject, data, reply=reply, headers=headers)
        except MaxPayloadError:
            if raise_too_large:
                raise
            log.warning("a reply to %s is larger than the NATS server's max_payload", subject)
        except NatsError as exc:  # disconnected for good: the caller's silence limit tells it
            log.warning("cannot reply to %s: %s", subject, exc)

    def cancel_all(self) -> None:
        for call in self.calls.values():
            call.ctx.cancel()
            call.scope.cancel()


async def _drain(subscriptions: list[Subscription]) -> None:
    """Unsubscribe, and handle what NATS sent before it took the unsubscribe."""
    for subscription in subscriptions:
        with contextlib.suppress(NatsError):
            await subscription.drain()  # type: ignore[no-untyped-call]


async def _leave(client: Client, subscriptions: list[Subscription]) -> None:
    """Leave a queue group without dropping a request NATS already chose this member for.

    The server may hand a request to a member just before it takes the member's
    unsubscribe and deliver it after the round trip that confirms it, which is as long as
    a subscription's drain waits; the client library then drops it, and its caller hears
    nothing. So the unsubscribe goes out first, the subscription keeps handling what
    arrives for a grace period, and only then drains.
    """
    # nats-py has no public call that sends an unsubscribe and keeps the subscription.
    send_unsubscribe = getattr(client, "_send_unsubscribe", None)
    if send_unsubscribe is not None:
        for subscription in subscriptions:
            with contextlib.suppress(NatsError):
                await send_unsubscribe(subscription._id)
        await anyio.sleep(LEAVE_GRACE_S)
    await _drain(subscriptions)
