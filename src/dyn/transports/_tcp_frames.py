"""The dyn tcp frame codec (transports/tcp.md): bytes in, frames out, and back.

Pure: no sockets, no anyio. A frame is ``(type, stream_id, body)``; REQUEST, ERROR and
WINDOW bodies have helpers to build and parse them. Anything that breaks the spec raises
:class:`FrameError`, after which the connection it came from must be closed.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import msgspec

from dyn.errors import ProtocolError

__all__ = [
    "CANCEL",
    "DATA",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_STREAM_WINDOW_BYTES",
    "END",
    "ERROR",
    "FLAG_AUTH",
    "HEADER",
    "MAGIC",
    "PING",
    "PONG",
    "PREFACE_SIZE",
    "REQUEST",
    "TYPE_NAMES",
    "WINDOW",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "decode_preface",
    "encode_cancel",
    "encode_data",
    "encode_end",
    "encode_error",
    "encode_frame",
    "encode_ping",
    "encode_pong",
    "encode_preface",
    "encode_request",
    "encode_window",
    "parse_error",
    "parse_preface",
    "parse_request",
    "parse_window",
]

MAGIC = b"DYN\x00"
_PREFACE = struct.Struct(">4sHH")  # magic, protocol version, flags
PREFACE_SIZE = _PREFACE.size
# Preface flag set by a server that requires the cluster-secret handshake (tcp.md, 1.1).
FLAG_AUTH = 0x0001

# length (of everything after it: type + stream id + body), type, stream id
HEADER = struct.Struct(">IBI")
_AFTER_LENGTH = 5  # type (1) + stream id (4): the smallest legal length
_U32 = struct.Struct(">I")

REQUEST, DATA, END, ERROR, CANCEL, WINDOW, PING, PONG = range(1, 9)
TYPE_NAMES = {
    REQUEST: "REQUEST",
    DATA: "DATA",
    END: "END",
    ERROR: "ERROR",
    CANCEL: "CANCEL",
    WINDOW: "WINDOW",
    PING: "PING",
    PONG: "PONG",
}

DEFAULT_MAX_FRAME_BYTES = 16 * 2**20
# As HTTP/2's default per-stream window is 64 KiB and gRPC raises it, 256 KiB keeps a
# loopback stream busy without letting one slow consumer pin much memory.
DEFAULT_STREAM_WINDOW_BYTES = 256 * 2**10

Frame = tuple[int, int, bytes]  # type, stream id, body

_request_decoder = msgspec.msgpack.Decoder(tuple[str, dict[str, str], bytes])
_error_decoder = msgspec.msgpack.Decoder(tuple[str, str])
_encoder = msgspec.msgpack.Encoder()


class FrameError(ProtocolError):
    """The peer sent bytes that break the dyn tcp framing; close its connection."""


# -- preface ------------------------------------------------------------------------------


def encode_preface(version: int, flags: int = 0) -> bytes:
    return _PREFACE.pack(MAGIC, version, flags)


def decode_preface(data: bytes) -> int:
    """The protocol version in an 8-byte preface; ``FrameError`` if it is not one."""
    return parse_preface(data)[0]


def parse_preface(data: bytes) -> tuple[int, int]:
    """``(version, flags)`` of an 8-byte preface; ``FrameError`` if it is not one."""
    if len(data) != PREFACE_SIZE or data[:4] != MAGIC:
        raise FrameError("not a dyn tcp preface")
    _, version, flags = _PREFACE.unpack(data)
    return int(version), int(flags)


# -- encoding -----------------------------------------------------------------------------


def encode_frame(ftype: int, stream_id: int, body: bytes = b"") -> bytes:
    return HEADER.pack(_AFTER_LENGTH + len(body), ftype, stream_id) + body


def encode_request(stream_id: int, path: str, headers: Mapping[str, str], payload: bytes) -> bytes:
    body = _encoder.encode((path, dict(headers), payload))
    return HEADER.pack(_AFTER_LENGTH + len(body), REQUEST, stream_id) + body


def encode_data(stream_id: int, body: bytes) -> bytes:
    return HEADER.pack(_AFTER_LENGTH + len(body), DATA, stream_id) + body


def encode_end(stream_id: int) -> bytes:
    return HEADER.pack(_AFTER_LENGTH, END, stream_id)


def encode_error(stream_id: int, code: str, message: str) -> bytes:
    body = _encoder.encode((code, message))
    return HEADER.pack(_AFTER_LENGTH + len(body), ERROR, stream_id) + body


def encode_cancel(stream_id: int) -> bytes:
    return HEADER.pack(_AFTER_LENGTH, CANCEL, stream_id)


def encode_window(stream_id: int, increment: int) -> bytes:
    return HEADER.pack(_AFTER_LENGTH + 4, WINDOW, stream_id) + _U32.pack(increment)


def encode_ping(opaque: bytes) -> bytes:
    return encode_frame(PING, 0, opaque)


def encode_pong(opaque: bytes) -> bytes:
    return encode_frame(PONG, 0, opaque)


# -- decoding -----------------------------------------------------------------------------


def parse_request(body: bytes) -> tuple[str, dict[str, str], bytes]:
    """``(path, headers, payload)`` from a REQUEST body."""
    try:
        return _request_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise FrameError(f"bad REQUEST body: {exc}") from None


def parse_error(body: bytes) -> tuple[str, str]:
    """``(code, message)`` from an ERROR body."""
    try:
        return _error_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise FrameError(f"bad ERROR body: {exc}") from None


def parse_window(body: bytes) -> int:
    return int(_U32.unpack(body)[0])  # the decoder has checked the size and value


def _check(ftype: int, stream_id: int, body_len: int, body: bytes) -> None:
    """Header rules that hold whatever the connection's state (tcp.md, "Frames")."""
    if ftype in (PING, PONG):
        if stream_id != 0 or body_len != 8:
            raise FrameError(f"{TYPE_NAMES[ftype]} needs stream id 0 and an 8-byte body")
        return
    if ftype not in TYPE_NAMES:
        raise FrameError(f"unknown frame type {ftype}")
    if stream_id == 0 or stream_id % 2 == 0:
        raise FrameError(f"{TYPE_NAMES[ftype]} on stream id {stream_id}, which is not odd")
    if ftype in (END, CANCEL) and body_len:
        raise FrameError(f"{TYPE_NAMES[ftype]} with a {body_len}-byte body")
    if ftype == WINDOW and (body_len != 4 or _U32.unpack(body)[0] == 0):
        raise FrameError("WINDOW needs a 4-byte increment of at least 1")


class FrameDecoder:
    """Cuts a byte stream into frames, checking each header as soon as it is complete."""

    __slots__ = ("_buf", "_max")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_frame_bytes

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back for the next :meth:`feed`."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """The frames ``data`` completes, in order; keeps any partial frame for later."""
        held = self._buf
        buf: bytes | bytearray
        if held:
            held += data
            buf = held
        else:
            buf = data  # the common case: parse straight from the chunk, no copy
        frames: list[Frame] = []
        pos, end = 0, len(buf)
        unpack, maximum, check = HEADER.unpack_from, self._max, _check
        while end - pos >= HEADER.size:
            length, ftype, stream_id = unpack(buf, pos)
            if length < _AFTER_LENGTH or length > maximum:
                raise FrameError(f"frame length {length} outside 5..{maximum}")
            stop = pos + 4 + length
            if stop > end:
                break
            body = bytes(buf[pos + HEADER.size : stop])
            if ftype != DATA:  # DATA needs only the stream id rule, checked below
                check(ftype, stream_id, length - _AFTER_LENGTH, body)
            elif stream_id == 0 or stream_id % 2 == 0:
                raise FrameError(f"DATA on stream id {stream_id}, which is not odd")
            frames.append((ftype, stream_id, body))
            pos = stop
        if buf is held:
            del held[:pos]
        elif pos < end:
            held += buf[pos:]
        return frames
