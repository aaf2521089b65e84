"""The ``logprobs`` of a choice in OpenAI's two shapes, built from the backend's tokens.

Chat (``logprobs: true``, ``top_logprobs: N``)::

    {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob",
    "bytes"}, ...]}, ...], "refusal": null}

Completions (``logprobs: N``)::

    {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token: logprob}, ...],
    "text_offset": [...]}

``text_offset`` is each token's start in the answer (the sum of the lengths of the
tokens before it, and of the prompt with ``echo``). A token may hold part of a
character: its ``token`` is then its bytes decoded with U+FFFD for what is incomplete,
and ``bytes`` has the exact bytes.
Used only for requests that asked for logprobs.
"""

from __future__ import annotations

from typing import Any

import msgspec

from dyn.contracts.processor import OutputLogprob
from dyn.openai.sse import Kind

__all__ = ["LogprobsRender"]

_encode = msgspec.json.encode


def _text(token: bytes) -> str:
    return token.decode("utf-8", "replace")


class LogprobsRender:
    """One choice's logprobs: per streamed chunk (:meth:`chunk`) or whole (:meth:`whole`)."""

    def __init__(self, kind: Kind, text_start: int = 0) -> None:
        self._chat = kind == "chat"
        self._offset = text_start
        self._all: list[OutputLogprob] = []
        self._offsets: list[int] = []

    def add(self, entries: list[OutputLogprob]) -> None:
        """Take the logprobs of the tokens of one output, in order."""
        offsets = self._offsets
        for entry in entries:
            offsets.append(self._offset)
            self._offset += len(_text(entry.token))
        self._all += entries

    def chunk(self, start: int) -> bytes:
        """The JSON of the logprobs added since entry ``start`` (for one streamed chunk)."""
        return _encode(self._shape(start))

    @property
    def count(self) -> int:
        return len(self._all)

    def whole(self) -> dict[str, Any]:
        return self._shape(0)

    def _shape(self, start: int) -> dict[str, Any]:
        entries = self._all[start:]
        if self._chat:
            return {
                "content": [
                    {
                        "token": _text(e.token),
                        "logprob": e.logprob,
                        "bytes": list(e.token),
                        "top_logprobs": [
                            {"token": _text(t), "logprob": lp, "bytes": list(t)} for t, lp in e.top
                        ],
                    }
                    for e in entries
                ],
                "refusal": None,
            }
        return {
            "tokens": [_text(e.token) for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{_text(t): lp for t, lp in e.top} for e in entries],
            "text_offset": self._offsets[start:],
        }
