"""Decoding and checking typed messages: once per request at dispatch, once per item
at the caller.

A byte transport's payloads are decoded straight into the declared type by a msgspec
decoder made once per type. An object-carrying transport (in-process) hands over the
caller's object: it is used as it is when it already has the declared type, converted
when it does not (a dict from an untyped caller), and turned into plain data for an
untyped receiver, which is what it would have got from the wire.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cache
from typing import Any

import msgspec

from dyn.errors import BadRequestError
from dyn.runtime import codec

__all__ = ["ItemReader", "MalformedItem", "RequestReader", "item_reader", "plain"]

# msgpack carries these as they are; to_builtins would turn them into base64 text.
_RAW_TYPES = (bytes, bytearray)


def plain(obj: Any) -> Any:
    """``obj`` as the plain data the wire would have delivered."""
    return msgspec.to_builtins(obj, builtin_types=_RAW_TYPES)


def is_checked(tp: Any) -> bool:
    """Whether requests of type ``tp`` are validated (Structs are; ``Any`` or dicts not)."""
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _convert(obj: Any, tp: Any) -> Any:
    if isinstance(obj, msgspec.Struct):  # a Struct of another type: go by its fields
        obj = plain(obj)
    return msgspec.convert(obj, tp)


class _Reader(ABC):
    """Turns what a transport delivers into the declared type (``None``: plain data).

    Subclasses say which error a malformed message becomes on their side of the call.
    """

    __slots__ = ("_decode", "_type")

    def __init__(self, tp: Any) -> None:
        self._type = tp
        self._decode = msgspec.msgpack.Decoder(tp).decode if tp is not None else None

    @abstractmethod
    def _invalid(self, detail: str) -> Exception:
        """The error for a message that does not match the declared type."""

    @abstractmethod
    def _not_msgpack(self, detail: str) -> Exception:
        """The error for bytes that are not msgpack at all."""

    def from_bytes(self, data: bytes) -> Any:
        if self._decode is None:
            return codec.decode(data)
        try:
            return self._decode(data)
        except msgspec.ValidationError as exc:
            raise self._invalid(str(exc)) from exc
        except msgspec.DecodeError as exc:
            raise self._not_msgpack(str(exc)) from exc

    def from_object(self, obj: Any) -> Any:
        tp = self._type
        if tp is None:
            return plain(obj)
        if type(obj) is tp:
            return obj
        try:
            return _convert(obj, tp)
        except msgspec.ValidationError as exc:
            raise self._invalid(str(exc)) from exc


class RequestReader(_Reader):
    """The serving side of one endpoint: payload in, the handler's request out. Only
    Struct requests are checked; anything else is plain data."""

    __slots__ = ("_name",)

    def __init__(self, name: str, request_type: Any) -> None:
        super().__init__(request_type if is_checked(request_type) else None)
        self._name = name

    def _invalid(self, detail: str) -> Exception:
        return BadRequestError(f"{self._name}: {detail}")

    def _not_msgpack(self, detail: str) -> Exception:
        return BadRequestError(f"{self._name}: payload is not valid msgpack: {detail}")


class ItemReader(_Reader):
    """The calling side: what the transport delivers in, an item out. One per item type,
    shared by every call (see :func:`item_reader`); a malformed item raises
    :class:`MalformedItem`, which the caller turns into a ``ProtocolError`` naming the
    endpoint (built only then, off the hot path)."""

    __slots__ = ()

    def __init__(self, item_type: Any) -> None:
        super().__init__(item_type if item_type is not None and item_type is not Any else None)

    def _invalid(self, detail: str) -> Exception:
        return MalformedItem(f"sent a malformed output: {detail}")

    def _not_msgpack(self, detail: str) -> Exception:
        return MalformedItem(f"sent bytes that are not msgpack: {detail}")


class MalformedItem(Exception):
    """An item that does not match its declared type (the message says how)."""


@cache
def item_reader(item_type: Any) -> ItemReader:
    """The shared reader for ``item_type`` (``None``: untyped, plain data)."""
    return ItemReader(item_type)
