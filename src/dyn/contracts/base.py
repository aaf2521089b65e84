"""Typed references to endpoints: a name plus the request and item types it speaks.

An :class:`EndpointRef` lets a caller say which endpoint it calls and lets mypy check
the payload and the items: ``client.stream(ENGINE_GENERATE, EngineRequest(...))``
yields ``EngineOutput``. This module depends on nothing but msgspec, so the cores and
the graph checks can name contracts without importing the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec

__all__ = ["Empty", "EndpointRef", "Text"]

ReqT = TypeVar("ReqT")
ItemT = TypeVar("ItemT")


@dataclass(frozen=True, slots=True)
class EndpointRef(Generic[ReqT, ItemT]):
    """The endpoint ``name``, taking a ``request`` and yielding ``item`` values."""

    name: str
    request: type[ReqT]
    item: type[ItemT]


class Empty(msgspec.Struct, frozen=True):
    """The request of an endpoint that needs no arguments (any fields sent are ignored)."""


class Text(msgspec.Struct, frozen=True, tag="text"):
    """An item that is a piece of text: ``{"type": "text", "text": ...}`` on the wire.

    The frontend's plain streaming routes (such as ``/generate``) write a Text item as
    its text, one line per item; any other item goes out as a line of JSON.
    """

    text: str
