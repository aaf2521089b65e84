"""A Hugging Face ``tokenizer.json``, through the optional ``tokenizers`` package."""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dyn.errors import PluginError, SpecError
from dyn.tokenizer.base import IncrementalDecoder, Tokenizer, WindowDecoder

__all__ = ["HfTokenizer"]

# Tried in order when tokenizer_config.json does not name the end-of-sequence token.
_EOS_NAMES = ("<|endoftext|>", "<|eot_id|>", "<|im_end|>", "</s>", "<eos>", "[SEP]")


class HfTokenizer(Tokenizer):
    """Loads ``path`` (a ``tokenizer.json`` or a folder holding one)."""

    def __init__(self, path: str) -> None:
        try:
            # Imported by name so that dyn type-checks and runs without the extra.
            tokenizers: Any = importlib.import_module("tokenizers")
        except ImportError as exc:
            raise PluginError(
                f"cannot load {path}: install dyn[hf] (the 'tokenizers' package) "
                "to use tokenizer.json, or leave the tokenizer unset for the built-in one"
            ) from exc
        file = Path(path)
        if file.is_dir():
            file = file / "tokenizer.json"
        try:
            self._tok: Any = tokenizers.Tokenizer.from_file(str(file))
            # Present in tokenizers >= 0.21; without it streams use the window decoder.
            self._stream_cls: Any = getattr(tokenizers.decoders, "DecodeStream", None)
        except Exception as exc:  # the Rust side raises plain Exception
            raise SpecError([f"cannot load tokenizer {file}: {exc}"]) from exc
        self._size = int(self._tok.get_vocab_size(with_added_tokens=True))
        self._eos = self._find_eos(file)

    def _find_eos(self, file: Path) -> int:
        names = list(_EOS_NAMES)
        config = file.with_name("tokenizer_config.json")
        if config.is_file():
            try:
                eos = json.loads(config.read_text("utf-8")).get("eos_token")
            except (OSError, ValueError, AttributeError):
                eos = None
            if isinstance(eos, dict):
                eos = eos.get("content")
            if isinstance(eos, str):
                names.insert(0, eos)
        for name in names:
            token_id = self._tok.token_to_id(name)
            if token_id is not None:
                return int(token_id)
        raise SpecError(
            [f"tokenizer {file} has no end-of-sequence token; tried {', '.join(names)}"]
        )

    @property
    def vocab_size(self) -> int:
        return self._size

    @property
    def eos_token_id(self) -> int:
        return self._eos

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self._tok.encode(text, add_special_tokens=False).ids  # a new list
        return ids

    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        if any(not 0 <= t < self._size for t in token_ids):
            raise ValueError(f"token ids must be ints in [0, {self._size})")
        return str(self._tok.decode(list(token_ids), skip_special_tokens=skip_special_tokens))

    def decode_stream(self) -> IncrementalDecoder:
        if self._stream_cls is None:
            return WindowDecoder(self)
        return _NativeStreamDecoder(self, self._tok, self._stream_cls(skip_special_tokens=True))


class _NativeStreamDecoder(IncrementalDecoder):
    """``tokenizers``' own stream decoder, which runs the same window scheme as
    :class:`WindowDecoder` in one native call per id instead of two decodes from Python.

    It keeps the window's ids beside the native state, as the window decoder would, so
    that :meth:`flush` can emit what is held back and a stream the native decoder refuses
    (its text stopped extending the previous text) goes on in a window decoder.
    """

    __slots__ = ("_fallback", "_ids", "_native", "_read", "_size", "_tok", "_tokenizer")

    def __init__(self, tokenizer: HfTokenizer, tok: Any, native: Any) -> None:
        self._tokenizer = tokenizer
        self._tok = tok
        self._native = native
        self._size = tokenizer.vocab_size
        self._ids: list[int] = []  # from the window's start
        self._read = 0  # ids before this are emitted
        self._fallback: WindowDecoder | None = None

    def step(self, token_id: int) -> str:
        if self._fallback is not None:
            return self._fallback.step(token_id)
        if not 0 <= token_id < self._size:
            raise ValueError(f"token ids must be ints in [0, {self._size})")
        ids = self._ids
        ids.append(token_id)
        try:
            text: str | None = self._native.step(self._tok, token_id)
        except Exception:  # the native side refuses a text that does not extend the last
            fallback = self._fallback = WindowDecoder(self._tokenizer)
            ids.pop()
            fallback.restore(ids, self._read)
            return fallback.step(token_id)
        if text is None:
            return ""
        # The window moves on as the native decoder's does: it starts at the old read.
        del ids[: self._read]
        self._read = len(ids)
        return text

    def flush(self) -> str:
        if self._fallback is None and self._read == len(self._ids):
            return ""  # nothing held back: what a window decoder's flush would find
        if self._fallback is None:
            self._fallback = WindowDecoder(self._tokenizer)
            self._fallback.restore(self._ids, self._read)
        return self._fallback.flush()
