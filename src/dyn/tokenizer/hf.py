"""A Hugging Face ``tokenizer.json``, through the optional ``tokenizers`` package."""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dyn.errors import PluginError, SpecError
from dyn.tokenizer.base import Tokenizer

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
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        if any(not 0 <= t < self._size for t in token_ids):
            raise ValueError(f"token ids must be ints in [0, {self._size})")
        return str(self._tok.decode(list(token_ids), skip_special_tokens=skip_special_tokens))
