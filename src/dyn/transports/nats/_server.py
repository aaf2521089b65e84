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


@dataclass(eq=False)
class _Call:
    inbox: str
    ctx: Context
    credit: int
    sent: int = 0  # data frames published
    granted: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    last_sent: float = field(default_factory=time.monotonic)


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
            if group is None:
                requests = await self.client.subscribe(
                    w.group_wildcard(namespace, component),
                    queue=w.group_queue(namespace, component),
                    cb=self._on_group_request,
                )
                controls = await self.client.subscribe(
                    w.group_control_subject(namespace, component), cb=self._on_control
                )
                await self.client.flush()  # a member before the instance is announced
                group = self.groups[namespace, component] = _Group([requests, controls])
            if instance_id not in group.instances:
                group.instances.append(instance_id)

    async def withdraw(self, namespace: str, component: str, instance_id: str) -> None:
        """Leave the group once the last of the component's instances here is withdrawn;
        calls it took already run on."""
        async with self._grouping:
            group = self.groups.get((namespace, component))
            if group is None or instance_id not in group.instances:
                return
            group.instances.remove(instance_id)
            if group.instances:
                return
            del self.groups[namespace, component]
            for subscription in group.subscriptions:
                with contextlib.suppress(NatsError):
                    await subscription.unsubscribe()

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
        headers = msg.headers or {}
        await self._accept(msg.reply, headers.get(w.H_PATH), headers, msg.data)

    async def _on_group_request(self, msg: Msg) -> None:
        """A call to the component's queue group: run it on one of the component's
        instances here, after telling the caller which server took it."""
        inbox = msg.reply
        headers = msg.headers or {}
        if not inbox or inbox in self.calls:
            return
        try:
            namespace, component, _ = w.group_path(headers.get(w.H_PATH, ""))
        except ValueError as exc:
            await self._error(inbox, ProtocolError(str(exc)))
            return
        group = self.groups.get((namespace, component))
        if group is None:  # withdrawn while the request was on its way
            left = TransportError(f"{namespace}/{component} left nats:{self.sid}")
            await self._error(inbox, left)
            return
        await self._publish(inbox, b"", {w.H_FRAME: "accept", w.H_SERVER: self.sid})
        path = f"{headers[w.H_PATH]}/{group.next_instance()}"
        await self._accept(inbox, path, headers, msg.data)

    async def _accept(
        self, inbox: str | None, path: str | None, headers: dict[str, str], payload: bytes
    ) -> None:
        if not inbox or inbox in self.calls:
            return  # nowhere to answer (or a duplicate): nothing to run
        try:
            credit = int(headers.get(w.H_CREDIT, ""))
            version = int(headers.get(w.H_VERSION, ""))
        except ValueError:
            credit = version = -1
        if path is None or credit < 1:
            await self._error(inbox, ProtocolError("malformed nats request: no path or credit"))
            return
        if version != self.protocol_version:
            await self._error(
                inbox,
                ProtocolError(
                    f"server at nats:{self.sid} speaks dyn nats protocol version "
                    f"{self.protocol_version}; this caller speaks version {version}"
                ),
            )
            return
        call_headers = {
            k[len(w.H_PREFIX) :]: v for k, v in headers.items() if k.startswith(w.H_PREFIX)
        }
        call = _Call(inbox, Context.from_headers(call_headers), credit)
        self.calls[inbox] = call
        self.tasks.start_soon(self._run, call, path, payload)

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

    async def _run(self, call: _Call, path: str, payload: bytes) -> None:
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
                await run_handler(self.handler, path, payload, call.ctx, send)
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
