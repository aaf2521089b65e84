"""Hand-off helpers for hot paths.

anyio's ``receive()`` and ``send()`` always pass through a scheduling checkpoint, even
when an item is ready or there is room. Under load that is one extra trip round the
event loop per item per hop; these try the non-blocking call first and only wait when
they must. Producers still yield whenever a stream is full and consumers whenever it is
empty, so nothing can starve the loop for longer than a buffer's worth of items.

:class:`Wakeup` is the same idea for a consumer that polls its own state and only needs
to be woken when there is something new.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["Wakeup", "receive_soon", "send_soon"]

T = TypeVar("T")


async def receive_soon(stream: MemoryObjectReceiveStream[T]) -> T:
    try:
        return stream.receive_nowait()
    except anyio.WouldBlock:
        return await stream.receive()


async def send_soon(stream: MemoryObjectSendStream[T], item: T) -> None:
    try:
        stream.send_nowait(item)
    except anyio.WouldBlock:
        await stream.send(item)


class Wakeup:
    """Wakes the one task waiting in :meth:`wait`; reusable, and ``set`` with nobody
    waiting does nothing (the waiter checks its state before it waits).

    On asyncio the wait is a bare future: an ``anyio.Event`` costs about three times as
    much to make, wait on and set, and a token stream waits once per token. Cancellation
    works the same either way, since anyio cancels an asyncio task at whatever it awaits.
    """

    __slots__ = ("_event", "_future")

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None
        self._event: anyio.Event | None = None

    def set(self) -> None:
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_result(None)
        event, self._event = self._event, None
        if event is not None:
            event.set()

    async def wait(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # another backend than asyncio
            event = self._event = anyio.Event()
            await event.wait()
            return
        future = self._future = loop.create_future()
        await future
