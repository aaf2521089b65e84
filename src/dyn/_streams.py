"""Memory-stream helpers for hot paths.

anyio's ``receive()`` and ``send()`` always pass through a scheduling checkpoint, even
when an item is ready or there is room. Under load that is one extra trip round the
event loop per item per hop; these try the non-blocking call first and only wait when
they must. Producers still yield whenever a stream is full and consumers whenever it is
empty, so nothing can starve the loop for longer than a buffer's worth of items.
"""

from __future__ import annotations

from typing import TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["receive_soon", "send_soon"]

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
