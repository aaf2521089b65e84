"""Socket I/O for the tcp transport: a framed, buffered, non-blocking socket.

The transport drives raw non-blocking sockets with ``anyio.wait_readable`` /
``wait_writable`` rather than anyio's socket streams because a caller must be able to
send CANCEL from synchronous code (``CallStream.close_nowait``), and a stream's ``send``
can only be awaited. A write is therefore two steps: queue the bytes (always synchronous)
and push queued bytes into the kernel, either right away (:meth:`Wire.flush_nowait`) or
by awaiting writability (:meth:`Wire.drain`). The queue keeps order, so both may be mixed.

TLS (:meth:`Wire.start_tls`) keeps that design: the TLS state machine works on memory
buffers (``ssl.MemoryBIO``), plaintext is queued as before and encrypted in one go when the
queue is flushed, and the encrypted bytes go through the same non-blocking socket.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl

import anyio
import anyio.lowlevel

from dyn._streams import Wakeup
from dyn.transports._tcp_frames import PREFACE_SIZE, Frame, FrameDecoder
from dyn.transports._tls import describe_tls_error

__all__ = ["RECV_BYTES", "TlsError", "Wire", "WireClosed", "connect", "listen", "tune"]

# Bytes asked of the kernel per read: enough for many small frames per wake-up.
RECV_BYTES = 256 * 2**10


class WireClosed(Exception):
    """The connection is gone (peer closed, reset, or we closed it); ``str`` says how."""


class TlsError(WireClosed):
    """The TLS handshake failed or the TLS session broke; ``str`` says why, in words."""


def tune(sock: socket.socket) -> None:
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        # Frames are small and latency-bound; the writers batch on their own.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def connect(host: str, port: int) -> socket.socket:
    """A connected non-blocking socket to ``host:port``; ``OSError`` if none can be made."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"no address found for {host}")
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            tune(sock)
            try:
                sock.connect(sockaddr)
            except BlockingIOError:
                await anyio.wait_writable(sock)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, os.strerror(code)) from None
            return sock
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
    raise error


async def listen(host: str, port: int) -> socket.socket:
    """A listening non-blocking socket on ``host:port`` (SO_REUSEADDR, so restarts rebind)."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    sock = socket.create_server(sockaddr[:2], family=family, backlog=1024)
    sock.setblocking(False)
    return sock


class Wire:
    """One connection's socket: frames in, queued bytes out. Single-threaded, not locked.

    At most one task may await :meth:`receive` at a time (the transport's callers make
    sure of that); any number may :meth:`write`.
    """

    def __init__(self, sock: socket.socket, max_frame_bytes: int) -> None:
        self.sock = sock
        self.decoder = FrameDecoder(max_frame_bytes)
        self.closed: WireClosed | None = None
        self._out: list[bytes | memoryview] = []
        self._out_bytes = 0
        self._room: anyio.Event | None = None
        # Wakes run_writer; a bare future, as it is set after nearly every loop turn.
        self._wake = Wakeup()
        self._writer_waiting = False
        self._flush_scheduled = False
        self._drain_lock = anyio.Lock()
        # Whether the last read waited for the socket (so it yielded to other tasks).
        self._waited = False
        # TLS only: the session, its buffers, and encrypted bytes not yet in the kernel.
        self._tls: ssl.SSLObject | None = None
        self._tls_in = ssl.MemoryBIO()
        self._tls_out = ssl.MemoryBIO()
        self._sealed = bytearray()

    # -- TLS ------------------------------------------------------------------------------

    async def start_tls(self, context: ssl.SSLContext, *, server_side: bool) -> None:
        """Run the TLS handshake; every byte after it is encrypted. Call it first.

        Raises :class:`TlsError` (the peer's certificate is not trusted, it refused ours,
        or it does not speak TLS) or :class:`WireClosed`.
        """
        tls = self._tls = context.wrap_bio(self._tls_in, self._tls_out, server_side=server_side)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self.drain()
                self._tls_in.write(await self._recv_raw(RECV_BYTES))
            except ssl.SSLError as exc:
                self.flush_nowait()  # the alert that tells the peer why, if the kernel takes it
                raise self._close(describe_tls_error(exc), TlsError) from None
        await self.drain()

    def _decrypt(self, size: int) -> bytes:
        """Up to ``size`` plaintext bytes from what has arrived; ``b""`` if none yet."""
        assert self._tls is not None
        chunks: list[bytes] = []
        got = 0
        try:
            while got < size:
                chunk = self._tls.read(size - got)  # one TLS record at most
                if not chunk:  # the peer ended the session (close_notify)
                    if chunks:
                        break
                    raise self._close("the peer closed the connection")
                chunks.append(chunk)
                got += len(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            raise self._close(describe_tls_error(exc), TlsError) from None
        if self._tls_out.pending:  # reading made TLS answer something (a key update)
            self.flush_nowait()
        return b"".join(chunks)

    # -- reading --------------------------------------------------------------------------

    async def read_preface(self) -> bytes:
        """The peer's first 8 bytes, read exactly; stops early on a wrong first byte."""
        got = b""
        while len(got) < PREFACE_SIZE:
            chunk = await self._recv(PREFACE_SIZE - len(got))
            got += chunk
            if not b"DYN\x00".startswith(got[:4]):
                break  # not a dyn peer (an HTTP client, say): no need to wait for more
        return got

    async def read_exact(self, size: int) -> bytes:
        """Exactly ``size`` bytes (handshake fields); raises ``WireClosed`` if they stop."""
        got = b""
        while len(got) < size:
            got += await self._recv(size - len(got))
        return got

    async def receive(self) -> list[Frame]:
        """The next frames from the peer. Raises ``WireClosed`` or ``FrameError``."""
        while True:
            frames = self.decoder.feed(await self._recv(RECV_BYTES))
            if frames:
                return frames

    def poll_nowait(self) -> list[Frame] | None:
        """Frames from what the kernel already holds, ``None`` if it holds nothing."""
        self._check_open()
        if self._tls is not None:
            data = self._decrypt(RECV_BYTES)
            if not data:
                raw = self._recv_raw_nowait()
                if raw is None:
                    return None
                self._tls_in.write(raw)
                data = self._decrypt(RECV_BYTES)
            return self.decoder.feed(data)
        raw = self._recv_raw_nowait()
        return None if raw is None else self.decoder.feed(raw)

    def _recv_raw_nowait(self) -> bytes | None:
        try:
            data = self.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise self._close(str(exc)) from None
        if not data:
            raise self._close("the peer closed the connection")
        return data

    async def _recv(self, size: int) -> bytes:
        # A reader that found data waiting last time yields first, so one with data always
        # waiting cannot starve other tasks; one that waited for data has just yielded, and
        # tries the socket at once. After recv() returns there is no await, so no bytes are
        # lost to a cancellation.
        if not self._waited:
            await anyio.lowlevel.checkpoint()
        self._waited = False
        if self._tls is None:
            return await self._recv_raw(size)
        while not (data := self._decrypt(size)):
            self._tls_in.write(await self._recv_raw(RECV_BYTES))
        return data

    async def _recv_raw(self, size: int) -> bytes:
        while True:
            self._check_open()
            try:
                data = self.sock.recv(size)
            except BlockingIOError:
                self._waited = True
                try:
                    await anyio.wait_readable(self.sock)
                except anyio.ClosedResourceError:
                    raise self._close("the connection was closed") from None
                continue
            except OSError as exc:
                raise self._close(str(exc)) from None
            if not data:
                raise self._close("the peer closed the connection")
            return data

    # -- writing --------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Bytes queued and not yet handed to the kernel."""
        return self._out_bytes

    def write(self, data: bytes) -> None:
        """Queue ``data``; it goes out at the next flush or drain."""
        if self.closed is not None:
            return  # the reader reports the loss; writers need not
        self._out.append(data)
        self._out_bytes += len(data)
        if self._writer_waiting:
            self._flush_at_turn_end()

    def write_frame(self, header: bytes, body: bytes) -> None:
        """Queue a frame given as header and body, without copying a large body."""
        if self.closed is not None:
            return
        if len(body) < 4096:  # one small join now beats two queue entries
            self._out.append(header + body)
        else:
            self._out += (header, body)
        self._out_bytes += len(header) + len(body)
        if self._writer_waiting:
            self._flush_at_turn_end()

    def _flush_at_turn_end(self) -> None:
        """With the writer idle: send the loop turn's writes once the turn is over, from
        a plain callback (cheaper than waking the writer's task for every turn); the
        writer is woken only for what the kernel does not take."""
        if self._flush_scheduled:
            return
        self._flush_scheduled = True
        asyncio.get_running_loop().call_soon(self._turn_flush)

    def _turn_flush(self) -> None:
        self._flush_scheduled = False
        if self.closed is not None:
            return
        self.flush_nowait()
        if (self._out or self._sealed) and self._writer_waiting:
            self._writer_waiting = False
            self._wake.set()

    def flush_nowait(self) -> None:
        """Hand the kernel as much of the queue as it takes now, without waiting."""
        if self._tls is not None:
            self._flush_tls()
            return
        if not self._out or self.closed is not None:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._close(str(exc))
            return
        if sent == len(data):
            self._out.clear()
            self._out_bytes = 0
        else:
            self._out = [memoryview(data)[sent:]]
            self._out_bytes = len(data) - sent
        self._wake_writers()

    def _flush_tls(self) -> None:
        assert self._tls is not None
        if self.closed is not None:
            return
        if self._out:
            # One TLS write per flush: a loop turn's frames share records.
            try:
                self._tls.write(self._out[0] if len(self._out) == 1 else b"".join(self._out))
            except ssl.SSLError as exc:
                self._close(describe_tls_error(exc), TlsError)
                return
            self._out.clear()
        if self._tls_out.pending:
            self._sealed += self._tls_out.read()
        if self._sealed:
            try:
                sent = self.sock.send(self._sealed)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._close(str(exc))
                return
            del self._sealed[:sent]
        self._out_bytes = len(self._sealed)
        self._wake_writers()

    def _wake_writers(self) -> None:
        if self._room is not None and self._out_bytes <= self._low_water:
            self._room.set()
            self._room = None

    _low_water = 64 * 2**10

    async def drain(self) -> None:
        """Wait until the whole queue is in the kernel. Raises ``WireClosed``."""
        async with self._drain_lock:
            while True:
                self.flush_nowait()
                self._check_open()
                if not (self._out or self._sealed):
                    return
                try:
                    await anyio.wait_writable(self.sock)
                except anyio.ClosedResourceError:
                    raise self._close("the connection was closed") from None

    async def wait_for_room(self, high_water: int) -> None:
        """Block while more than ``high_water`` bytes are queued: the writer's bound."""
        while self._out_bytes > high_water and self.closed is None:
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()

    async def run_writer(self) -> None:
        """Drain the queue whenever something is written: batches a loop turn's frames.

        Returns when the connection closes (the reader reports why).
        """
        try:
            while self.closed is None:
                if not (self._out or self._sealed):
                    self._writer_waiting = True
                    await self._wake.wait()
                    continue
                # The kernel nearly always takes a loop turn's frames at once: only what
                # it left over needs the drain lock and a wait for writability.
                self.flush_nowait()
                if self._out or self._sealed:
                    await self.drain()
        except WireClosed:
            return

    # -- closing --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed is not None:
            raise WireClosed(str(self.closed))

    def _close(self, reason: str, kind: type[WireClosed] = WireClosed) -> WireClosed:
        if self.closed is None:
            self.closed = kind(reason)
            self._out.clear()
            self._sealed.clear()
            self._out_bytes = 0
            if self._room is not None:
                self._room.set()
            self._wake.set()
            anyio.notify_closing(self.sock)
            self.sock.close()
        return self.closed

    def close(self, reason: str = "the connection was closed") -> None:
        self._close(reason)
