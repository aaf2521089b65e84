"""A neighbour double for the proxy engine: a real HTTP/1.1 server on loopback that
answers with a handler written in httpx's request/response types.

The engine is given an ``opener`` that connects here whatever its upstream URL says, so
the requests keep the URL's host. A response with a ``content-length`` goes out as it
is, one without as chunked transfer-encoding, one chunk per part of its stream. The
server records every connection it accepted (``connections``), and closes a response's
stream when the client leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

Handler = Callable[[httpx.Request], httpx.Response]


class UpstreamDouble:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._server is None:
            await self.start()
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ")
                headers = [_header(x) for x in lines[1:] if x]
                fields = {k.lower(): v for k, v in headers}
                body = await reader.readexactly(int(fields.get("content-length", "0")))
                url = f"http://{fields['host']}{target}"
                request = httpx.Request(method, url, headers=headers, content=body)
                try:
                    response = self.handler(request)
                except httpx.ConnectError:
                    return  # not answering at all: the connection just closes
                if not await self._answer(response, reader, writer):
                    return
        except asyncio.CancelledError:
            pass  # the double is closing
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _answer(
        self, response: httpx.Response, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Write ``response``; False when the client left before its end."""
        chunked = "content-length" not in response.headers
        head = [f"HTTP/1.1 {response.status_code} X"]
        head += [f"{k}: {v}" for k, v in response.headers.items()]
        if chunked:
            head.append("transfer-encoding: chunked")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        left = asyncio.ensure_future(reader.read(1))  # b"" once the client closes
        try:
            async for part in _parts(stream, left):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
                await writer.drain()
            if chunked:
                writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        except _ClientLeft:
            return False
        finally:
            left.cancel()
            with contextlib.suppress(BaseException):
                await left  # so the next request's read is the only one waiting
            await stream.aclose()


def _header(line: str) -> tuple[str, str]:
    name, _, value = line.partition(": ")
    return name, value


class _ClientLeft(Exception):
    pass


async def _parts(
    stream: httpx.AsyncByteStream, left: asyncio.Future[bytes]
) -> AsyncIterator[bytes]:
    parts = stream.__aiter__()

    async def following() -> bytes | None:
        try:
            return await parts.__anext__()
        except StopAsyncIteration:
            return None

    while True:
        part = asyncio.ensure_future(following())
        waited: list[asyncio.Future[Any]] = [part, left]
        await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        if not part.done():
            part.cancel()
            with contextlib.suppress(BaseException):
                await part
            raise _ClientLeft
        got = part.result()
        if got is None:
            return
        yield got
