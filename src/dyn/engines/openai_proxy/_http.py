"""A lean HTTP/1.1 client for one upstream server: what the proxy needs, nothing more.

The proxy's cost is per token: every upstream SSE event is one network read or part of
one. A general client parses each read through a pure-Python HTTP state machine and
sets up each request through layers of pool and timeout objects; here a request is one
``write`` of bytes built in one go, the status line and headers are parsed once, and the
body is handed on per socket read (chunked transfer-encoding removed by slicing at the
chunk sizes, never byte by byte).

- Keep-alive: a connection whose response was read to its end goes back to the pool;
  one closed early (the client left) is closed, so the upstream sees the client go.
- Timeouts: ``connect_timeout`` bounds opening a connection (TLS included); ``timeout``
  bounds every wait for the upstream's next bytes, checked by one timer per response
  rather than one per read.
- Failures (refused, reset, timed out, malformed) raise :class:`UpstreamHttpError`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

from dyn.engines.openai_proxy._chunked import BodyDecoder, HttpParseError, parse_head

__all__ = ["Opener", "UpstreamHttpError", "UpstreamPool", "UpstreamResponse"]

Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]

# Bytes asked of the socket per read: many SSE events per wake-up under load.
_READ_BYTES = 256 * 2**10
# Idle keep-alive connections kept; a busy worker holds one per request in flight.
_MAX_IDLE = 256


class UpstreamHttpError(Exception):
    """The upstream could not be reached or broke the exchange; ``str`` says how."""


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.transport.is_closing()

    def close(self) -> None:
        self.writer.transport.abort()  # at once: the upstream stops generating for us


class UpstreamResponse:
    """A response whose status and headers are read; the body is read on demand.

    Always :meth:`close` it (the engine does so in ``finally``).
    """

    def __init__(
        self, pool: UpstreamPool, conn: _Connection, status: int, body: BodyDecoder
    ) -> None:
        self.status = status
        self._pool = pool
        self._conn: _Connection | None = conn
        self._body = body
        self._timed_out = False
        self._timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0

    async def iter_body(self) -> AsyncIterator[bytes]:
        """The body, one piece per socket read (empty pieces skipped)."""
        body = self._body
        conn = self._conn
        if conn is None:
            return
        loop = asyncio.get_running_loop()
        self._arm(loop)
        reader = conn.reader
        try:
            while not body.complete:
                try:
                    data = await reader.read(_READ_BYTES)
                except (OSError, ssl.SSLError) as exc:
                    raise UpstreamHttpError(f"connection broken mid-answer: {exc}") from exc
                self._last_read = loop.time()
                if not data:
                    if self._timed_out:
                        raise UpstreamHttpError(f"no answer for {self._pool.timeout:g} s")
                    if body.until_eof:
                        body.complete = True
                        break
                    raise UpstreamHttpError("closed the connection mid-answer")
                try:
                    piece = body.feed(data)
                except HttpParseError as exc:
                    raise UpstreamHttpError(str(exc)) from exc
                if piece:
                    yield piece
        finally:
            if self._timer is not None:
                self._timer.cancel()

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.iter_body()])

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._body.complete and self._body.keep_alive and conn.usable():
            self._pool.release(conn)
        else:
            conn.close()

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """One timer for the whole body: it re-arms itself until a wait passes the limit."""
        timeout = self._pool.timeout
        self._last_read = loop.time()

        def check() -> None:
            idle = loop.time() - self._last_read
            if idle < timeout:
                self._timer = loop.call_later(timeout - idle, check)
            elif self._conn is not None:
                self._timed_out = True
                self._conn.close()  # the pending read then sees the end of the stream

        self._timer = loop.call_later(timeout, check)


class UpstreamPool:
    """Keep-alive connections to one base URL (``http://`` or ``https://``, with an
    optional path prefix), and the one request shape the proxy sends."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str],
        timeout: float,
        connect_timeout: float,
        opener: Opener | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        tls = parts.scheme == "https"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if tls else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._ssl = (ssl_context or ssl.create_default_context()) if tls else None
        default_port = parts.port is None
        host_header = parts.netloc.rpartition("@")[2] if not default_port else self.host
        fixed = {"host": host_header, "user-agent": "dyn-proxy", **headers}
        self._fixed_head = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._opener = opener or self._open_socket
        self._idle: list[_Connection] = []
        self._closed = False

    async def _open_socket(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port, ssl=self._ssl, limit=_READ_BYTES)

    async def request(
        self, method: str, path: str, body: bytes, headers: str, *, wait_s: float | None = None
    ) -> UpstreamResponse:
        """Send one request (``headers`` already formatted as ``name: value\\r\\n`` lines)
        and read its status and headers. Raises :class:`UpstreamHttpError`."""
        head = (
            f"{method} {self.prefix}{path} HTTP/1.1\r\n{self._fixed_head}{headers}"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode("latin-1")
        wire = head + body
        while True:
            conn, reused = self._take()
            if conn is None:
                conn = await self._connect()
            try:
                return await self._exchange(conn, wire, wait_s or self.timeout)
            except _StaleConnection:
                # An idle connection the upstream closed as we sent: nothing was
                # processed, so the request goes once more on a fresh connection.
                conn.close()
                if not reused:
                    raise UpstreamHttpError("closed the connection before answering") from None
            except BaseException:
                conn.close()
                raise

    def _take(self) -> tuple[_Connection | None, bool]:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn, True
            conn.close()
        return None, False

    def release(self, conn: _Connection) -> None:
        if self._closed or len(self._idle) >= _MAX_IDLE:
            conn.close()
        else:
            self._idle.append(conn)

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await self._opener()
        except TimeoutError as exc:
            raise UpstreamHttpError(f"no connection within {self.connect_timeout:g} s") from exc
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamHttpError(str(exc) or type(exc).__name__) from exc
        return _Connection(reader, writer)

    async def _exchange(self, conn: _Connection, wire: bytes, wait_s: float) -> UpstreamResponse:
        writer, reader = conn.writer, conn.reader
        try:
            writer.write(wire)
            if writer.transport.get_write_buffer_size():
                await writer.drain()
            async with asyncio.timeout(wait_s):
                raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _StaleConnection from None
            raise UpstreamHttpError("closed the connection mid-headers") from exc
        except TimeoutError as exc:
            raise UpstreamHttpError(f"no answer for {wait_s:g} s") from exc
        except asyncio.LimitOverrunError as exc:
            raise UpstreamHttpError("sent headers too large to read") from exc
        except (OSError, ssl.SSLError) as exc:
            if isinstance(exc, ConnectionError):
                raise _StaleConnection from None
            raise UpstreamHttpError(str(exc) or type(exc).__name__) from exc
        try:
            status, body = parse_head(raw)
        except HttpParseError as exc:
            raise UpstreamHttpError(str(exc)) from exc
        return UpstreamResponse(self, conn, status, body)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _StaleConnection(Exception):
    """The connection ended before any byte of an answer."""
