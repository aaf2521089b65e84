"""Text to token ids and back.

The built-in :class:`WordTokenizer` needs no files or downloads and gives token counts
close to a real BPE tokenizer's on English text. A Hugging Face ``tokenizer.json`` works
too when the optional ``tokenizers`` package is installed (``dyn[hf]``).
"""

from __future__ import annotations

from dyn.tokenizer.base import IncrementalDecoder, Tokenizer
from dyn.tokenizer.words import WordTokenizer

__all__ = ["BUILTIN", "IncrementalDecoder", "Tokenizer", "WordTokenizer", "load_tokenizer"]

BUILTIN = "builtin"


def load_tokenizer(path: str | None) -> Tokenizer:
    """The built-in tokenizer for ``None`` or ``"builtin"``, else the ``tokenizer.json`` at
    ``path`` (a file or a folder holding one).

    Raises :class:`~dyn.errors.PluginError` when ``tokenizers`` is missing and
    :class:`~dyn.errors.SpecError` when the file cannot be loaded.
    """
    if path is None or path == BUILTIN:
        return WordTokenizer.builtin()
    from dyn.tokenizer.hf import HfTokenizer

    return HfTokenizer(path)
