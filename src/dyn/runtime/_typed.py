"""Decoding and checking typed messages: once per request at dispatch, once per item
at the caller.

A byte transport's payloads are decoded straight into the declared type by a msgspec
decoder made once per type. An object-carrying transport (in-process) hands over the
caller's object: it is used as it is when it already has the declared type, converted
when it does not (a dict from an untyped caller), and turned into plain data for an
untyped receiver, which is what it would have got from the wire.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from dyn.errors import BadRequestError, ProtocolError
from dyn.runtime import codec

__all__ = ["ItemReader", "RequestReader", "plain"]

# msgpack carries these as they are; to_builtins would turn them into base64 text.
_RAW_TYPES = (bytes, bytearray)


def plain(obj: Any) -> Any:
    """``obj`` as the plain data the wire would have delivered."""
    return msgspec.to_builtins(obj, builtin_types=_RAW_TYPES)


def is_checked(tp: Any) -> bool:
    """Whether requests of type ``tp`` are validated (Structs are; ``Any`` or dicts not)."""
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


@cache
def _decoder(tp: Any) -> msgspec.msgpack.Decoder[Any]:
    return msgspec.msgpack.Decoder(tp)


def _convert(obj: Any, tp: Any) -> Any:
    if isinstance(obj, msgspec.Struct):  # a Struct of another type: go by its fields
        obj = plain(obj)
    return msgspec.convert(obj, tp)


class RequestReader:
    """The serving side of one endpoint: payload in, the handler's request out."""

    __slots__ = ("_checked", "_name", "_type")

    def __init__(self, name: str, request_type: Any) -> None:
        self._name = name
        self._type = request_type
        self._checked = is_checked(request_type)

    def from_bytes(self, data: bytes) -> Any:
        if not self._checked:
            return codec.decode(data)
        try:
            return _decoder(self._type).decode(data)
        except msgspec.ValidationError as exc:
            raise BadRequestError(f"{self._name}: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise BadRequestError(f"{self._name}: payload is not valid msgpack: {exc}") from exc

    def from_object(self, obj: Any) -> Any:
        tp = self._type
        if not self._checked:
            return plain(obj)
        if type(obj) is tp:
            return obj
        try:
            return _convert(obj, tp)
        except msgspec.ValidationError as exc:
            raise BadRequestError(f"{self._name}: {exc}") from exc


class ItemReader:
    """The calling side of one call: what the transport delivers in, an item out."""

    __slots__ = ("_checked", "_type", "_where")

    def __init__(self, item_type: Any, where: str) -> None:
        self._type = item_type
        self._checked = item_type is not None and item_type is not Any
        self._where = where

    def from_bytes(self, data: bytes) -> Any:
        if not self._checked:
            return codec.decode(data)
        try:
            return _decoder(self._type).decode(data)
        except msgspec.ValidationError as exc:
            raise ProtocolError(f"{self._where} sent a malformed output: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise ProtocolError(f"{self._where} sent bytes that are not msgpack: {exc}") from exc

    def from_object(self, obj: Any) -> Any:
        if not self._checked:
            return plain(obj)
        tp = self._type
        if type(obj) is tp:
            return obj
        try:
            return _convert(obj, tp)
        except msgspec.ValidationError as exc:
            raise ProtocolError(f"{self._where} sent a malformed output: {exc}") from exc
