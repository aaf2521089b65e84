"""The calling side of the nats transport: one connection per transport object, one
reply inbox per call (under one wildcard subscription), credit granted as frames are read.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import NoReturn

import anyio
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError

from dyn.context import HEADER_DEADLINE
from dyn.errors import (
    BadRequestError,
    CallError,
    DeadlineExceeded,
    ProtocolError,
    TransportError,
    call_error_from_wire,
)
from dyn.transports.base import CallStream
from dyn.transports.nats import _wire as w

__all__ = ["Inboxes", "NatsCall"]


# Cancels sent by close_nowait, kept referenced until sent.
_BACKGROUND: set[asyncio.Task[None]] = set()


@dataclass
class _Frame:
    data: bytes
    kind: str  # data | end | error | keepalive | accept | gone
    code: str = ""  # error frames: the code; accept frames: the server id
    sent: str | None = None  # end and keepalive frames: the data frames the server sent
    number: str = ""  # a data frame's number, counted from 1 (its reply field)


class Inboxes:
    """The reply inboxes of one connection's calls: frames go to the call they name."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.prefix = client.new_inbox()
        self.calls: dict[str, NatsCall] = {}
        self._next = 0

    async def subscribe(self) -> None:
        await self.client.subscribe(f"{self.prefix}.*", cb=self._on_reply)

    def new(self) -> str:
        self._next += 1
        return f"{self.prefix}.{self._next}"

    async def _on_reply(self, msg: Msg) -> None:
        call = self.calls.get(msg.subject)
        if call is None:
            return
        headers = msg.headers
        if not headers:
            call.arrive(_Frame(msg.data, "data", number=msg.reply))
        elif headers.get(w.H_STATUS) == "503":
            call.arrive(_Frame(b"", "gone"))
        else:
            kind = headers.get(w.H_FRAME, "")
            code = headers.get(w.H_SERVER if kind == "accept" else w.H_CODE, "")
            call.arrive(_Frame(msg.data, kind, code, headers.get(w.H_SENT)))


class NatsCall(CallStream):
    def __init__(
        self,
        inboxes: Callable[[], Awaitable[Inboxes]],
        address: str,
        path: str,
        payload: bytes,
        headers: Mapping[str, str],
        credit: int,
        protocol_version: int,
    ) -> None:
        self._inboxes_factory = inboxes
        self._address = address
        self._path = path
        self._payload = payload
        self._headers = headers
        self._credit = credit
        self._version = protocol_version
        self._frames: deque[_Frame] = deque()
        self._arrived = anyio.Event()
        self._inboxes: Inboxes | None = None
        self._inbox = ""
        self._sid = ""  # the server's id; for a call to a queue group, once one took it
        self._control = ""  # where credit and cancels go
        self._read = 0  # data frames read since the last grant
        self._received = 0  # data frames read in all
        self._done = False
        self._deadline = math.inf
        remaining = headers.get(HEADER_DEADLINE)
        if remaining is not None:
            with contextlib.suppress(ValueError):
                self._deadline = anyio.current_time() + max(0.0, float(remaining))

    def arrive(self, frame: _Frame) -> None:
        self._frames.append(frame)
        self._arrived.set()

    def has_ready(self) -> bool:
        frames = self._frames
        if frames and frames[0].kind == "accept":  # read on the way to the data frame
            return len(frames) > 1 and frames[1].kind == "data"
        return bool(frames) and frames[0].kind == "data"

    async def _start(self) -> None:
        if self._address == w.GROUP_ADDRESS:
            try:
                namespace, component, _ = w.group_path(self._path)
            except ValueError as exc:  # the caller's mistake: no use trying elsewhere
                raise BadRequestError(str(exc)) from None
            subject = w.group_subject(self._path)
            # Until a member answers, control messages go to every member of the group.
            self._control = w.group_control_subject(namespace, component)
        else:
            try:
                self._sid = w.parse_address(self._address)
            except ValueError as exc:
                raise TransportError(str(exc)) from None
            subject = w.call_subject(self._sid, self._path)
            self._control = w.control_subject(self._sid)
        inboxes = await self._inboxes_factory()
        self._inboxes = inboxes
        self._inbox = inboxes.new()
        inboxes.calls[self._inbox] = self
        headers = {f"{w.H_PREFIX}{k}": v for k, v in self._headers.items()}
        headers[w.H_PATH] = self._path
        headers[w.H_VERSION] = str(self._version)
        headers[w.H_CREDIT] = str(self._credit)
        try:
            await inboxes.client.publish(subject, self._payload, reply=self._inbox, headers=headers)
        except MaxPayloadError:
            self._finish()
            raise BadRequestError(
                f"the request to {self._path} ({len(self._payload)} bytes) is larger than "
                "the NATS server's max_payload"
            ) from None
        except NatsError as exc:
            self._finish()
            raise TransportError(f"cannot send a call to {self._address}: {exc}") from exc

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        if self._inboxes is None:
            await self._start()
        while not self._frames:
            self._arrived = anyio.Event()
            wait = min(w.SILENCE_LIMIT_S, self._deadline - anyio.current_time())
            with anyio.move_on_after(max(0.0, wait)):
                await self._arrived.wait()
            if self._frames:
                break
            error: CallError
            if anyio.current_time() >= self._deadline:
                error = DeadlineExceeded(f"deadline passed while calling {self._path}")
            else:
                error = TransportError(
                    f"no word from {self._where()} for {w.SILENCE_LIMIT_S:.1f} s calling "
                    f"{self._path}: the server or its link to NATS is gone"
                )
            await self.aclose()
            raise error
        frame = self._frames.popleft()
        if frame.kind == "data":
            self._received += 1
            if frame.number and frame.number != str(self._received):
                await self._lost(frame.number)
            await self._granted_one()
            return frame.data
        if frame.sent is not None and frame.sent != str(self._received):
            await self._lost(frame.sent)
        if frame.kind == "keepalive":
            return await self.__anext__()
        if frame.kind == "accept" and not self._sid and self._received == 0:
            try:
                self._sid = w.parse_address(w.address_of(frame.code))
            except ValueError:
                pass  # a malformed reply frame: failed below
            else:
                self._control = w.control_subject(self._sid)
                return await self.__anext__()
        self._finish()
        if frame.kind == "end":
            raise StopAsyncIteration
        if frame.kind == "error":
            raise call_error_from_wire(frame.code, frame.data.decode(errors="replace"))
        if frame.kind == "gone":
            raise TransportError(f"no server answers at {self._address} (calling {self._path})")
        await self._send_control("cancel")
        raise ProtocolError(f"malformed nats reply frame {frame.kind!r} from {self._address}")

    def _where(self) -> str:
        """The server, in messages: for a call to a queue group, the member that took it."""
        return w.address_of(self._sid) if self._sid else self._address

    async def _lost(self, sent: str) -> NoReturn:
        """Frames lost on the way (NATS delivers at most once: a restarted server drops
        what it held): the stream has a hole, so the call fails before the item after
        it is passed on, as the server's loss would fail it, and a caller may resend it
        elsewhere."""
        await self.aclose()
        raise TransportError(
            f"{sent} items sent by {self._where()} but {self._received} arrived calling "
            f"{self._path}: the link to NATS lost some"
        )

    async def _granted_one(self) -> None:
        self._read += 1
        if self._read * 2 >= self._credit:
            grant, self._read = self._read, 0
            await self._send_control("credit", grant)

    async def _send_control(self, op: str, credit: int = 0) -> None:
        if self._inboxes is None:
            return
        headers = {w.H_CALL: self._inbox, w.H_OP: op}
        if credit:
            headers[w.H_CREDIT] = str(credit)
        # Disconnected: the server's call ends by its deadline, or stalls out of credit.
        with contextlib.suppress(NatsError):
            await self._inboxes.client.publish(self._control, b"", headers=headers)

    def _finish(self) -> None:
        self._done = True
        if self._inboxes is not None:
            self._inboxes.calls.pop(self._inbox, None)

    async def aclose(self) -> None:
        if self._done:
            return
        self._finish()
        with anyio.CancelScope(shield=True):
            await self._send_control("cancel")

    def close_nowait(self) -> None:
        if self._done:
            return
        self._finish()
        if self._inboxes is not None:
            # A cancelled task cannot await: the cancel is sent from a task of its own.
            task = asyncio.get_running_loop().create_task(self._send_control("cancel"))
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)
