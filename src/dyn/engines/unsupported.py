"""Request fields an engine that writes its own text cannot honour.

The simulated engine samples tokens: it cannot keep to a JSON schema or call a tool.
Ignoring such a field would hand the client output it did not ask for, so a request
that needs one is refused (400) naming the field. An engine that forwards requests to
a real server (the ``openai_proxy``) does not call this: the server honours them.

The fields reach an engine in ``EngineRequest.extra_fields`` (the client's fields the
OpenAI layer does not consume, as JSON); they are decoded only when one of the names
occurs in those bytes, so a request without them costs a substring scan.
"""

from __future__ import annotations

from typing import Any

import msgspec

from dyn.errors import BadRequestError

__all__ = ["refuse_unsupported_fields"]


class _ResponseFormat(msgspec.Struct):
    type: str = "text"


class _Fields(msgspec.Struct):
    response_format: _ResponseFormat | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None


_decode = msgspec.json.Decoder(_Fields).decode


def refuse_unsupported_fields(extra_fields: bytes) -> None:
    """Raise :class:`BadRequestError` if ``extra_fields`` asks for structured output
    (``response_format.type`` other than ``text``) or for tool calls (non-empty ``tools``
    with ``tool_choice`` other than ``none``)."""
    if b'"response_format"' not in extra_fields and b'"tools"' not in extra_fields:
        return
    try:
        fields = _decode(extra_fields)
    except msgspec.DecodeError:
        return  # a shape OpenAI's API does not have either: nothing to honour
    kind = fields.response_format.type if fields.response_format is not None else "text"
    if kind != "text":
        raise BadRequestError(
            f"response_format.type {kind!r} is not supported: the simulated engine cannot "
            "keep its output to a format; send type 'text' or leave response_format out",
            param="response_format",
        )
    choice = "auto" if fields.tool_choice is None else fields.tool_choice
    if fields.tools and choice != "none":
        shown = choice if isinstance(choice, str) else msgspec.json.encode(choice).decode()
        raise BadRequestError(
            f"tools with tool_choice {shown!r} are not supported: the simulated engine "
            "cannot call tools; leave tools out or send tool_choice 'none'",
            param="tools",
        )
