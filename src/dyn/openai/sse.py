"""Response bodies: server-sent-event chunks and whole responses, byte-for-byte stable.

A streamed chunk differs from the previous one only in its text and finish reason, so
each stream pre-encodes the constant head and tail once and per chunk only JSON-encodes
the text. Keys keep a fixed order and separators are compact, as OpenAI's are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec

from dyn.openai.errors import error_body

__all__ = [
    "DONE",
    "ChunkFormatter",
    "Kind",
    "Usage",
    "UsageChunkFormatter",
    "error_event",
    "full_response",
    "usage",
]

Kind = Literal["chat", "completion"]

DONE = b"data: [DONE]\n\n"
_encode = msgspec.json.encode


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> Usage:
    return Usage(
        prompt_tokens,
        completion_tokens,
        prompt_tokens + completion_tokens,
        PromptTokensDetails(cached_tokens),
    )


class ChunkFormatter:
    """Builds the ``data: ...`` events of one streamed response."""

    def __init__(
        self, kind: Kind, response_id: str, created: int, model: str, include_usage: bool
    ) -> None:
        obj = b"chat.completion.chunk" if kind == "chat" else b"text_completion"
        self._envelope = b'data: {"id":%s,"object":"%s","created":%d,"model":%s,"choices":' % (
            _encode(response_id),
            obj,
            created,
            _encode(model),
        )
        if kind == "chat":
            self._head = self._envelope + b'[{"index":0,"delta":{"content":'
            self._first_head = (
                self._envelope + b'[{"index":0,"delta":{"role":"assistant","content":'
            )
            self._mid = b'},"logprobs":null,"finish_reason":'
            self._mid_logprobs = b'},"logprobs":'
        else:
            self._head = self._first_head = self._envelope + b'[{"index":0,"text":'
            self._mid = b',"logprobs":null,"finish_reason":'
            self._mid_logprobs = b',"logprobs":'
        # OpenAI marks every chunk with "usage":null when a usage chunk will follow.
        self._end = b'}],"usage":null}\n\n' if include_usage else b"}]}\n\n"
        self._tail = self._mid + b"null" + self._end
        self._first = True

    def chunk(
        self, text: str, finish_reason: str | None = None, logprobs: bytes | None = None
    ) -> bytes:
        """One event; ``logprobs`` is the JSON of the chunk's logprobs, if asked for."""
        head = self._head
        if self._first:
            head, self._first = self._first_head, False
        if logprobs is not None:
            return (
                head
                + _encode(text)
                + self._mid_logprobs
                + logprobs
                + b',"finish_reason":'
                + _encode(finish_reason)
                + self._end
            )
        if finish_reason is None:
            return head + _encode(text) + self._tail
        return head + _encode(text) + self._mid + _encode(finish_reason) + self._end

    def usage(self, counts: Usage) -> bytes:
        return self._envelope + b'[],"usage":' + _encode(counts) + b"}\n\n"


class UsageChunkFormatter(ChunkFormatter):
    """Chunks that each carry the usage so far (``stream_options.continuous_usage_stats``,
    as vLLM writes them): ``counts`` is asked once per chunk."""

    def __init__(
        self, kind: Kind, response_id: str, created: int, model: str, counts: Callable[[], Usage]
    ) -> None:
        super().__init__(kind, response_id, created, model, include_usage=True)
        self._counts = counts

    def chunk(
        self, text: str, finish_reason: str | None = None, logprobs: bytes | None = None
    ) -> bytes:
        head = self._head
        if self._first:
            head, self._first = self._first_head, False
        mid = (
            self._mid if logprobs is None else self._mid_logprobs + logprobs + b',"finish_reason":'
        )
        reason = b"null" if finish_reason is None else _encode(finish_reason)
        counts = _encode(self._counts())
        return head + _encode(text) + mid + reason + b'}],"usage":' + counts + b"}\n\n"


def error_event(status: int, message: str, code: str | None) -> bytes:
    """A failure after the stream began: the error as one event (``[DONE]`` follows)."""
    return b"data: " + _encode(error_body(status, message, code=code)) + b"\n\n"


def full_response(
    kind: Kind,
    response_id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str | None,
    counts: Usage,
    logprobs: Any = None,
) -> bytes:
    """The body of a non-streamed response; ``logprobs`` the choice's, if asked for."""
    choice: dict[str, Any] = {"index": 0}
    if kind == "chat":
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    choice["logprobs"] = logprobs
    choice["finish_reason"] = finish_reason
    body = {
        "id": response_id,
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": counts,
    }
    return _encode(body)
