"""Payload encoding: msgpack through msgspec, done once per message by the runtime.

Never pickle: a peer can only make us build plain data (dicts, lists, strings, numbers).
"""

from __future__ import annotations

from typing import Any

import msgspec

from dyn.errors import BadRequestError

__all__ = ["decode", "encode"]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def decode(data: bytes) -> Any:
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise BadRequestError(f"payload is not valid msgpack: {exc}") from exc
