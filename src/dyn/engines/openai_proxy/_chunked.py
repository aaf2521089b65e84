"""An HTTP/1.1 response's head and body framing, parsed from bytes (no I/O here).

The body decoder takes whatever one socket read returned and gives back the body bytes
in it: with ``Content-Length`` a slice, with chunked transfer-encoding the chunks'
data cut out at their sizes (one ``find`` per chunk, never a loop over bytes).
"""

from __future__ import annotations

__all__ = ["BodyDecoder", "HttpParseError", "parse_head"]

# A chunk-size line longer than this is not HTTP (sizes are hex numbers).
_MAX_SIZE_LINE = 1024


class HttpParseError(Exception):
    """The upstream's response is not HTTP/1.1 dyn can read; ``str`` says what."""


class BodyDecoder:
    """One response body's framing. ``complete`` once the body has ended; ``keep_alive``
    when the connection may carry the next request afterwards."""

    def __init__(self, *, length: int | None, chunked: bool, keep_alive: bool) -> None:
        self.chunked = chunked
        self.until_eof = not chunked and length is None
        self.keep_alive = keep_alive and not self.until_eof
        self._left = length or 0  # body bytes still due (content-length) or of this chunk
        self.complete = not chunked and length == 0
        self._buffer = b""  # an incomplete chunk-size line or CRLF
        self._need_crlf = False  # the CRLF after a chunk's data is due
        self._in_trailer = False

    def feed(self, data: bytes) -> bytes:
        if self.complete:
            return b""
        if not self.chunked:
            if self.until_eof:
                return data
            if len(data) >= self._left:
                data = data[: self._left]
                self.complete = True
            self._left -= len(data)
            return data
        return self._feed_chunked(self._buffer + data if self._buffer else data)

    def _feed_chunked(self, buf: bytes) -> bytes:
        out: list[bytes] = []
        pos, end = 0, len(buf)
        while pos < end:
            if self._left:
                take = min(self._left, end - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._left -= take
                if self._left:
                    break
                self._need_crlf = True
                continue
            if self._need_crlf:
                if end - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise HttpParseError("a chunk of the body is longer than its size")
                pos += 2
                self._need_crlf = False
                continue
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                if end - pos > _MAX_SIZE_LINE:
                    raise HttpParseError("a chunk-size line is too long")
                break
            line = buf[pos:line_end]
            pos = line_end + 2
            if self._in_trailer:
                if not line:
                    self.complete = True
                    pos = end
                    break
                continue
            try:
                size = int(line.partition(b";")[0], 16)
            except ValueError:
                raise HttpParseError(f"bad chunk size {line[:40]!r}") from None
            if size < 0:
                raise HttpParseError(f"bad chunk size {line[:40]!r}")
            if size == 0:
                self._in_trailer = True
            self._left = size
        self._buffer = buf[pos:] if pos < end else b""
        if len(out) == 1:
            return out[0]
        return b"".join(out)


def parse_head(raw: bytes) -> tuple[int, BodyDecoder]:
    """The status and body framing of a response head (status line to blank line)."""
    lines = raw.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    if not version.startswith(b"HTTP/1."):
        raise HttpParseError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
    try:
        status = int(rest[:3])
    except ValueError:
        raise HttpParseError(f"bad status line {lines[0][:80]!r}") from None
    keep_alive = version == b"HTTP/1.1"
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise HttpParseError(f"bad content-length {value[:40]!r}") from None
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            token = value.strip().lower()
            keep_alive = token == b"keep-alive" or (keep_alive and token != b"close")
    if chunked:
        length = None
    elif status in (204, 304) or 100 <= status < 200:
        length = 0
    return status, BodyDecoder(length=length, chunked=chunked, keep_alive=keep_alive)
