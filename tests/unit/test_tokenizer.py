"""The built-in tokenizer: exact round trips, realistic counts, streaming decode."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dyn.errors import PluginError, SpecError
from dyn.tokenizer import Tokenizer, WordTokenizer, load_tokenizer
from dyn.tokenizer.base import IncrementalDecoder, WindowDecoder
from dyn.tokenizer.words import EOS_TOKEN

TOK = WordTokenizer.builtin()
ROOT = Path(__file__).resolve().parents[2]

PARAGRAPHS = [
    "It was a bright cold day in April, and the clocks were striking thirteen. The old man "
    "walked slowly down the road toward the village, carrying a basket of apples for his "
    "daughter, who had been ill for most of the winter.",
    "My grandmother kept a small garden behind her house, where she grew tomatoes, beans "
    "and a few stubborn roses. Every summer we spent long afternoons there, pulling weeds "
    "and listening to her stories about the town where she was born.",
    "The committee met on Thursday to discuss the budget for next year. After a long "
    "debate, the members agreed to increase funding for public libraries, although several "
    "people worried that the city could not afford it.",
    "Scientists have discovered that some birds can find their way using the magnetic "
    "field of the earth. The finding helps explain how flocks travel thousands of miles "
    "without getting lost, even across the open ocean at night.",
]


def test_vocabulary_shape() -> None:
    assert 16_000 <= TOK.vocab_size <= 32_768
    assert TOK.eos_token_id == TOK.vocab_size - 1
    assert TOK.decode([TOK.eos_token_id]) == ""
    assert TOK.decode([TOK.eos_token_id], skip_special_tokens=False) == EOS_TOKEN
    assert [TOK.piece(i) for i in (0, 10, 255)] == ["<0x00>", "<0x0A>", "<0xFF>"]
    assert resources.files("dyn.tokenizer").joinpath("vocab.txt").is_file()


def test_common_words_are_one_token_with_a_leading_space() -> None:
    ids = TOK.encode("The quick brown fox jumps over the lazy dog.")
    assert [TOK.piece(i) for i in ids[:3]] == ["The", "Ġquick", "Ġbrown"]
    assert 9 <= len(ids) <= 12


@pytest.mark.parametrize("text", PARAGRAPHS)
def test_prose_counts_are_close_to_bpe(text: str) -> None:
    ratio = TOK.count(text) / len(text.split())
    assert 1.1 <= ratio <= 1.6, ratio


def test_rare_words_split_into_pieces_not_bytes() -> None:
    ids = TOK.encode(" zyxomorphically")
    assert all(i >= 256 for i in ids)
    assert 2 <= len(ids) <= 6


@given(st.text())
def test_any_text_round_trips(text: str) -> None:
    assert TOK.decode(TOK.encode(text)) == text


@pytest.mark.parametrize(
    "text",
    ["", " ", "\n\n\t  x", "naïve café 東京 🎉 𝄞", "a" * 1000, "x\r\ny", "__init__(self)"],
)
def test_edge_texts_round_trip(text: str) -> None:
    assert TOK.decode(TOK.encode(text)) == text


def test_lone_surrogates_encode_without_failing() -> None:
    assert TOK.decode(TOK.encode("a\ud800b")) == "a\ufffd\ufffd\ufffdb"


@given(st.lists(st.integers(0, TOK.vocab_size - 1), max_size=50))
def test_every_id_decodes_and_streaming_agrees(ids: list[int]) -> None:
    whole = TOK.decode(ids)
    stream = TOK.decode_stream()
    assert "".join(stream.step(i) for i in ids) + stream.flush() == whole


def test_stream_holds_back_a_split_character() -> None:
    ids = TOK.encode("ok 𝄞!")
    clef = [i for i in ids if i < 256]
    assert len(clef) == 4  # the clef is not in the vocabulary: four byte tokens
    stream = TOK.decode_stream()
    deltas = [stream.step(i) for i in ids]
    assert deltas[-5:] == ["", "", "", "𝄞", "!"]
    assert stream.flush() == ""


def test_decode_rejects_ids_out_of_range() -> None:
    for bad in ([-1], [TOK.vocab_size]):
        with pytest.raises(ValueError, match="token ids must be ints"):
            TOK.decode(bad)


def test_invalid_vocabulary_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="expected <0x00>"):
        WordTokenizer(["x"] * 300)


def test_window_decoder_matches_whole_decode() -> None:
    text = "streamed naïve 𝄞 text"
    ids = TOK.encode(text)
    stream = WindowDecoder(TOK)
    assert stream.feed(ids) + stream.flush() == text
    alias = TOK.incremental_decoder()
    assert alias.feed(ids) + alias.flush() == text


def test_load_tokenizer_builtin_by_default() -> None:
    assert load_tokenizer(None) is TOK
    assert load_tokenizer("builtin") is TOK


def test_tokenizer_json_without_the_extra_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(PluginError, match=r"install dyn\[hf\]"):
        load_tokenizer("some/tokenizer.json")


def test_tokenizer_json_loads_with_the_extra(tmp_path: Path) -> None:
    tok = _trained_byte_level(tmp_path, corpus=PARAGRAPHS)
    assert tok.eos_token_id == 0
    text = "the garden, 𝄞 at night"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    stream = tok.decode_stream()
    assert "".join(stream.step(i) for i in ids) + stream.flush() == text


def test_broken_tokenizer_json_is_a_spec_error(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(SpecError, match="cannot load tokenizer"):
        load_tokenizer(str(tmp_path / "tokenizer.json"))


@pytest.mark.skipif(sys.version_info[:3] != (3, 11, 7), reason="vocab.txt came from 3.11.7")
def test_vocab_txt_is_what_make_vocab_writes() -> None:
    script = ROOT / "tools" / "make_vocab.py"
    out = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _trained_byte_level(tmp_path: Path, corpus: Sequence[str] = ()) -> Tokenizer:
    """A byte-level BPE tokenizer.json trained on ``corpus`` (by default the paragraphs and
    a few accented and astral characters), loaded as dyn loads one."""
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer(tokenizers.models.BPE())
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["</s>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    hf.train_from_iterator(corpus or [*PARAGRAPHS, "naïve 𝄞 café"], trainer)
    hf.save(str(tmp_path / "tokenizer.json"))
    return load_tokenizer(str(tmp_path))


def _metaspace_words(tmp_path: Path) -> Tokenizer:
    tokenizers = pytest.importorskip("tokenizers")
    words = sorted({w for p in PARAGRAPHS for w in p.split()})
    vocab = {"<unk>": 0, "</s>": 1, **{f"▁{w}": i + 2 for i, w in enumerate(words)}}
    hf = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    hf.decoder = tokenizers.decoders.Metaspace()
    hf.save(str(tmp_path / "tokenizer.json"))
    return load_tokenizer(str(tmp_path))


def _steps(stream: IncrementalDecoder, ids: list[int]) -> list[str]:
    return [stream.step(i) for i in ids] + [stream.flush()]


@pytest.mark.parametrize("build", [_trained_byte_level, _metaspace_words])
def test_hf_stream_decoder_emits_what_the_window_decoder_does(
    build: Callable[[Path], Tokenizer], tmp_path: Path
) -> None:
    """Delta by delta, held-back partial characters and the flush included."""
    tok = build(tmp_path)
    assert type(tok.decode_stream()) is not WindowDecoder  # the native one is in use

    @given(st.lists(st.integers(0, tok.vocab_size - 1), max_size=24))
    def check(ids: list[int]) -> None:
        assert _steps(tok.decode_stream(), ids) == _steps(WindowDecoder(tok), ids)

    check()
    text = "naïve 𝄞 café, the garden"
    ids = tok.encode(text)
    assert "".join(_steps(tok.decode_stream(), ids)) == tok.decode(ids)


class _Refusing:
    """A native stream decoder that refuses every id after the first ``accepted``."""

    def __init__(self, native: Any, accepted: int) -> None:
        self._native = native
        self._left = accepted

    def step(self, hf: object, token_id: int) -> str | None:
        if self._left == 0:
            raise Exception("invalid prefix")
        self._left -= 1
        return self._native.step(hf, token_id)  # type: ignore[no-any-return]


def test_hf_stream_decoder_hands_over_when_the_native_one_refuses(tmp_path: Path) -> None:
    tok = _trained_byte_level(tmp_path)
    ids = tok.encode("naïve 𝄞 café, the garden at night")
    expected = _steps(WindowDecoder(tok), ids)
    for refuse_at in range(len(ids)):
        stream = tok.decode_stream()
        stream._native = _Refusing(stream._native, refuse_at)  # type: ignore[attr-defined]
        assert _steps(stream, ids) == expected


def test_hf_stream_decoder_rejects_ids_out_of_range(tmp_path: Path) -> None:
    tok = _metaspace_words(tmp_path)
    with pytest.raises(ValueError, match="token ids must be ints"):
        tok.decode_stream().step(tok.vocab_size)
