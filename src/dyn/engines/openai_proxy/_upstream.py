"""Reading an upstream's answers: SSE events, typed chunks, and its errors as dyn's errors.

Status mapping (the client asked dyn, so only what the client can fix stays a 4xx)::

    400, 422        BadRequestError, the upstream's message (prompt too long, bad value)
    413             PayloadTooLargeError
    429             OverloadedError (the frontend answers 429 with Retry-After)
    401, 403, 404   TransportError: dyn's key or model name is wrong, not the client's request
    5xx, no answer  TransportError (503 with Retry-After)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from dyn.errors import (
    BadRequestError,
    CallError,
    OverloadedError,
    PayloadTooLargeError,
    TransportError,
    call_error_from_wire,
)

__all__ = [
    "UpstreamChunk",
    "UpstreamUsage",
    "error_from_body",
    "error_from_status",
    "in_band_error",
    "parse_chunk",
    "sse_batches",
]

_DONE = b"[DONE]"


def _message_of(body: bytes) -> str:
    """The ``error.message`` of an OpenAI-style error body, or the body's start."""
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body[:300].decode("utf-8", "replace").strip()
    if isinstance(decoded, dict):
        error = decoded.get("error", decoded)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(decoded.get("detail"), str):  # FastAPI's own errors
            return str(decoded["detail"])
        if isinstance(error, str):
            return error
    return body[:300].decode("utf-8", "replace").strip()


def error_from_status(status: int, message: str, upstream: str) -> CallError:
    """The dyn error for an upstream HTTP status (see the module docstring)."""
    if status in (400, 422):
        return BadRequestError(message)
    if status == 413:
        return PayloadTooLargeError(message)
    if status == 429:
        return OverloadedError(f"upstream {upstream} is overloaded: {message}")
    if status in (401, 403):
        return TransportError(
            f"upstream {upstream} refused dyn's credentials ({status}: {message}); "
            "check the proxy worker's api_key"
        )
    if status == 404:
        return TransportError(
            f"upstream {upstream} answered 404 ({message}); check the proxy worker's "
            "upstream URL and model"
        )
    return TransportError(f"upstream {upstream} answered {status}: {message}")


def error_from_body(status: int, body: bytes, upstream: str) -> CallError:
    return error_from_status(status, _message_of(body) or f"HTTP {status}", upstream)


def in_band_error(error: Any, upstream: str) -> CallError:
    """An error event inside a stream: vLLM puts the HTTP status in ``code``, dyn's own
    frontend a wire code such as ``"unavailable"``.

    Of dyn's own errors, only what the client can fix or retry passes through as it is;
    anything else means the upstream failed.
    """
    message = str(error.get("message", error)) if isinstance(error, dict) else str(error)
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, int) and not isinstance(code, bool):
        return error_from_status(code, message, upstream)
    if isinstance(code, str):
        relayed = call_error_from_wire(code, message)
        if isinstance(relayed, BadRequestError | OverloadedError):
            return relayed
    return TransportError(f"upstream {upstream} failed mid-stream: {message}")


class CachedDetails(msgspec.Struct):
    cached_tokens: int | None = None


class UpstreamUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: CachedDetails | None = None

    @property
    def cached_tokens(self) -> int | None:
        """``prompt_tokens_details.cached_tokens``, when the upstream reports it."""
        details = self.prompt_tokens_details
        return details.cached_tokens if details is not None else None


class UpstreamChoice(msgspec.Struct):
    text: str | None = None
    finish_reason: str | None = None
    token_ids: list[int] | None = None  # vLLM's return_token_ids


class UpstreamChunk(msgspec.Struct):
    """The part of a ``/v1/completions`` stream chunk dyn reads; the rest is skipped
    unparsed, so each chunk costs one pass of msgspec's decoder."""

    choices: list[UpstreamChoice] = msgspec.field(default_factory=list)
    usage: UpstreamUsage | None = None
    error: Any = None


_chunk_decoder = msgspec.json.Decoder(UpstreamChunk)


def parse_chunk(data: bytes) -> UpstreamChunk:
    """One ``data:`` payload; an event that is not such a chunk is the upstream's fault."""
    try:
        return _chunk_decoder.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise TransportError(
            f"upstream sent an event dyn cannot read ({exc}): {data[:80]!r}"
        ) from exc


async def sse_batches(chunks: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """The ``data:`` payloads of an SSE body's events up to ``[DONE]``, as one list per
    read of the body (several events usually arrive together).

    Events are cut at their blank lines with one ``split`` per read; an event's data is
    its ``data:`` lines joined. Comments, ``event:`` lines and events without data carry
    nothing an OpenAI stream needs.
    """
    rest = b""
    async for chunk in chunks:
        buffer = rest + chunk if rest else chunk
        if b"\r" in buffer:  # CRLF line ends, which SSE allows; rare
            buffer = buffer.replace(b"\r\n", b"\n")
        events = buffer.split(b"\n\n")
        rest = events.pop()
        batch: list[bytes] = []
        for event in events:
            data = _data_of(event)
            if data == _DONE:
                if batch:
                    yield batch
                # Read to the end of the body so the connection can be reused.
                async for _ in chunks:
                    pass
                return
            if data:
                batch.append(data)
        if batch:
            yield batch
    data = _data_of(rest.rstrip(b"\n"))
    if data and data != _DONE:
        yield [data]


def _data_of(event: bytes) -> bytes:
    if event.startswith(b"data:") and b"\n" not in event:  # an OpenAI event: one line
        return event[5:].strip()
    lines = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines)
