"""The built-in tokenizer: whole words where it can, known pieces where not, bytes last.

Text is first cut GPT-2 style into chunks (a word with its leading space, up to three
digits, a run of punctuation, or whitespace). A chunk found in the vocabulary is one
token; any other chunk is split by greedy longest match over the vocabulary's pieces,
and a character no piece covers becomes its UTF-8 bytes, one token each. Ids 0-255 are
those bytes, so any text round-trips exactly.

``vocab.txt`` holds one piece per line, line number = id. Pieces show a space as ``Ġ``,
a newline as ``Ċ`` and a tab as ``ĉ`` (GPT-2's printable stand-ins for those bytes);
``<0xHH>`` is a byte and ``<|...|>`` a special token. ``tools/make_vocab.py`` builds it.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from functools import cache
from importlib import resources

from dyn.errors import SpecError
from dyn.tokenizer.base import IncrementalDecoder, Tokenizer

__all__ = ["EOS_TOKEN", "PRETOKENIZE", "WordTokenizer", "escape_piece", "unescape_piece"]

EOS_TOKEN = "<|endoftext|>"  # GPT-2's name for it

# Every character falls in exactly one class (letters, decimal digits, other non-space,
# space), so the chunks always cover the whole text. ``_`` counts as punctuation.
PRETOKENIZE = re.compile(r" ?[^\W\d_]+| ?\d{1,3}| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+")

_ESCAPES = {" ": "Ġ", "\n": "Ċ", "\t": "ĉ"}
_UNESCAPES = {v: k for k, v in _ESCAPES.items()}
_ESCAPE = str.maketrans(_ESCAPES)
_UNESCAPE = str.maketrans(_UNESCAPES)
_BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")
_SPECIAL_PIECE = re.compile(r"<\|[a-z_]+\|>")

# Chunks seen again skip the greedy split; cleared when full, which is cheaper than LRU
# bookkeeping on every lookup and loses little (common words are single pieces anyway).
_CACHE_SIZE = 1 << 16
_MAX_CHUNK = 256


def _utf8(char: str) -> bytes:
    # surrogatepass: a lone surrogate is not valid text but is a legal str to encode.
    return char.encode("utf-8", "surrogatepass")


def escape_piece(piece: str) -> str:
    """A piece as written in ``vocab.txt``."""
    return piece.translate(_ESCAPE)


def unescape_piece(line: str) -> str:
    """The text of a ``vocab.txt`` line that holds an ordinary piece."""
    return line.translate(_UNESCAPE)


class WordTokenizer(Tokenizer):
    """A deterministic word-level tokenizer over a fixed vocabulary.

    ``lines`` are ``vocab.txt`` lines: the 256 byte tokens first (ids 0-255), then text
    pieces and special tokens in any order. Use :meth:`builtin` for the shipped one.
    """

    def __init__(self, lines: Sequence[str]) -> None:
        problems: list[str] = []
        if len(lines) < 257:
            problems.append(f"a vocabulary needs the 256 byte tokens and more; got {len(lines)}")
        piece_id: dict[str, int] = {}
        shown: list[bytes] = []
        special: list[int] = []
        for i, line in enumerate(lines):
            byte = _BYTE_PIECE.fullmatch(line)
            if i < 256:
                if byte is None or int(byte.group(1), 16) != i:
                    problems.append(f"line {i + 1}: expected <0x{i:02X}>, got {line!r}")
                shown.append(bytes([i]))
                continue
            if byte is not None or not line:
                problems.append(f"line {i + 1}: {line!r} is not a valid piece here")
            elif _SPECIAL_PIECE.fullmatch(line):
                special.append(i)
                shown.append(line.encode())
            else:
                piece = unescape_piece(line)
                if piece in piece_id:
                    problems.append(f"line {i + 1}: duplicate piece {line!r}")
                piece_id[piece] = i
                shown.append(piece.encode())
        if EOS_TOKEN not in lines:
            problems.append(f"the vocabulary has no {EOS_TOKEN} token")
        if problems:
            raise SpecError([f"invalid tokenizer vocabulary: {p}" for p in problems[:5]])
        self._piece_id = piece_id
        self._max_len = max(map(len, piece_id))
        self._bytes_all = shown
        self._bytes_plain = list(shown)
        for i in special:
            self._bytes_plain[i] = b""
        self._eos = list(lines).index(EOS_TOKEN)
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def builtin(cls) -> WordTokenizer:
        """The tokenizer over the vocabulary shipped in this package (loaded once)."""
        return _builtin()

    @property
    def vocab_size(self) -> int:
        return len(self._bytes_all)

    @property
    def eos_token_id(self) -> int:
        return self._eos

    def encode(self, text: str) -> list[int]:
        piece_id = self._piece_id
        cache = self._cache
        out: list[int] = []
        for chunk in PRETOKENIZE.findall(text):
            whole = piece_id.get(chunk)
            if whole is not None:
                out.append(whole)
                continue
            ids = cache.get(chunk)
            if ids is None:
                if len(cache) >= _CACHE_SIZE:
                    cache.clear()
                ids = cache[chunk] = self._split(chunk)
            out += ids
        return out

    def _split(self, chunk: str) -> list[int]:
        if len(chunk) > _MAX_CHUNK:
            # Bounds the quadratic-ish search on pathological input (a megabyte of letters).
            parts = range(0, len(chunk), _MAX_CHUNK)
            return [t for i in parts for t in self._split(chunk[i : i + _MAX_CHUNK])]
        # Fewest tokens wins (dynamic programming from the right). Plain greedy longest
        # match splits "thirteen" as "thi|rte|en" where "thir|teen" exists; counts then
        # drift above what BPE gives. Ties keep the longest first piece.
        piece_id = self._piece_id
        n = len(chunk)
        cost = [0] * (n + 1)
        step = [0] * (n + 1)
        for i in range(n - 1, -1, -1):
            best, best_end = 0, 0
            for end in range(min(n, i + self._max_len), i, -1):
                if chunk[i:end] in piece_id and (not best_end or cost[end] + 1 < best):
                    best, best_end = cost[end] + 1, end
            if not best_end:  # no piece starts here: this character's bytes
                best, best_end = cost[i + 1] + len(_utf8(chunk[i])), i + 1
            cost[i], step[i] = best, best_end
        out: list[int] = []
        i = 0
        while i < n:
            end = step[i]
            pid = piece_id.get(chunk[i:end])
            # Byte tokens have ids equal to their values.
            out += [pid] if pid is not None else _utf8(chunk[i])
            i = end
        return out

    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        table = self._bytes_plain if skip_special_tokens else self._bytes_all
        try:
            if token_ids and min(token_ids) < 0:
                raise IndexError
            data = b"".join([table[i] for i in token_ids])
        except (IndexError, TypeError) as exc:
            raise ValueError(f"token ids must be ints in [0, {len(table)})") from exc
        return data.decode("utf-8", "replace")

    def decode_stream(self) -> IncrementalDecoder:
        return _ByteStreamDecoder(self._bytes_plain)

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes_all[token_id]

    def piece(self, token_id: int) -> str:
        """The ``vocab.txt`` spelling of one id (for display and debugging)."""
        if token_id < 256:
            return f"<0x{token_id:02X}>"
        return escape_piece(self._bytes_all[token_id].decode())


class _ByteStreamDecoder(IncrementalDecoder):
    """Pieces are byte strings, so Python's incremental UTF-8 decoder does the holding back."""

    def __init__(self, table: list[bytes]) -> None:
        self._table = table
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def step(self, token_id: int) -> str:
        return self._utf8.decode(self._table[token_id])

    def flush(self) -> str:
        return self._utf8.decode(b"", True)


@cache
def _builtin() -> WordTokenizer:
    text = resources.files("dyn.tokenizer").joinpath("vocab.txt").read_text("utf-8")
    return WordTokenizer(text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"))
