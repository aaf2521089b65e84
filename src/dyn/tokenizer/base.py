"""The tokenizer interface and a generic incremental decoder for any implementation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

__all__ = ["IncrementalDecoder", "Tokenizer", "WindowDecoder"]


class IncrementalDecoder(ABC):
    """Turns token ids, fed one at a time, into text deltas.

    A multi-byte character may be split across ids; the decoder holds such a partial
    character back until the id that completes it arrives, so the concatenation of all
    deltas plus :meth:`flush` equals ``tokenizer.decode(all_ids)``.
    """

    @abstractmethod
    def step(self, token_id: int) -> str:
        """Add one id; return the text it completes (often ``""`` mid-character)."""

    def feed(self, token_ids: Sequence[int]) -> str:
        """Add several ids; return the text they complete."""
        if len(token_ids) == 1:  # the usual case: one id per engine step
            return self.step(token_ids[0])
        return "".join([self.step(t) for t in token_ids])

    @abstractmethod
    def flush(self) -> str:
        """End of stream: return whatever was held back (a partial character as U+FFFD)."""


class Tokenizer(ABC):
    """Maps text to token ids and back. One object serves many concurrent requests.

    Contract:

    - ``encode`` never fails on any ``str`` and adds no special tokens.
    - ``decode`` accepts any id in ``[0, vocab_size)`` in any order and never fails;
      bytes that do not form valid UTF-8 decode as U+FFFD. Special ids (such as
      ``eos_token_id``) decode to ``""`` unless ``skip_special_tokens`` is false.
    - Both are pure functions of their arguments and cheap enough to call on the
      request path (microseconds per word).
    """

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids; every id in ``[0, vocab_size)`` decodes."""

    @property
    @abstractmethod
    def eos_token_id(self) -> int:
        """The id that ends a sequence."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """The ids of ``text``."""

    @abstractmethod
    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """The text of ``token_ids``."""

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one id stands for (a special token's name for a special id); may
        be part of a character. What OpenAI's logprobs report as a token's ``bytes``."""
        return self.decode([token_id], skip_special_tokens=False).encode()

    def count(self, text: str) -> int:
        """How many tokens ``text`` encodes to."""
        return len(self.encode(text))

    def decode_stream(self) -> IncrementalDecoder:
        """A fresh decoder for one stream of ids (one per request)."""
        return WindowDecoder(self)

    def incremental_decoder(self) -> IncrementalDecoder:
        """Another name for :meth:`decode_stream`, as some callers spell it."""
        return self.decode_stream()


class WindowDecoder(IncrementalDecoder):
    """Incremental decoding for tokenizers that only offer whole-sequence ``decode``.

    Decodes a short window of recent ids and emits what it adds beyond the already
    emitted prefix; a trailing U+FFFD means a character is still incomplete, so it waits.
    This is the prefix/read-offset scheme that vLLM and TGI use for the same problem.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the window
        self._read = 0  # ids before this are emitted

    def step(self, token_id: int) -> str:
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        done = decode(self._ids[self._prefix : self._read])
        text = decode(self._ids[self._prefix :])
        if text.endswith("\ufffd") or len(text) <= len(done):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(done) :]

    def restore(self, window: list[int], read: int) -> None:
        """Continue a stream whose window holds ``window``, of which ``read`` ids were
        emitted (how another decoder of the same scheme hands its state over)."""
        self._ids = list(window)
        self._prefix = 0
        self._read = read

    def flush(self) -> str:
        decode = self._tokenizer.decode
        done = decode(self._ids[self._prefix : self._read])
        text = decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return text[len(done) :]
