"""Stop strings on a stream of text deltas: cut before the first one, wherever the deltas
split it, and nothing held back once the stream ends without one."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dyn.tokenizer.stop import StopMatcher

_TEXT = st.text(alphabet="abcé ", max_size=40)


def _stream(matcher: StopMatcher, deltas: list[str]) -> tuple[str, bool]:
    out = []
    for delta in deltas:
        text, hit = matcher.feed(delta)
        out.append(text)
        if hit:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


def _expected(text: str, stops: list[str]) -> tuple[str, bool]:
    # The stop string complete first, reading from the start (of two at once, the longer):
    # where generation a character at a time would have stopped.
    found = [(i + len(s), i) for s, i in ((s, text.find(s)) for s in stops) if i != -1]
    return (text[: min(found)[1]], True) if found else (text, False)


@given(
    text=_TEXT,
    stops=st.lists(st.text(alphabet="abcé ", min_size=1, max_size=4), min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 40), max_size=12),
)
def test_any_split_of_the_text_gives_the_text_before_the_first_stop(
    text: str, stops: list[str], cuts: list[int]
) -> None:
    points = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    deltas = [text[a:b] for a, b in itertools.pairwise(points)]
    assert _stream(StopMatcher(stops), deltas) == _expected(text, stops)


def test_a_stop_string_spanning_tokens_is_held_back_then_cut() -> None:
    matcher = StopMatcher(["Poker"])
    assert matcher.feed("Texas Po") == ("Texas ", False)  # "Po" may start "Poker"
    assert matcher.feed("k") == ("", False)
    assert matcher.feed("er night") == ("", True)


def test_held_text_that_is_not_a_stop_string_is_released() -> None:
    matcher = StopMatcher(["Poker"])
    assert matcher.feed("a Po") == ("a ", False)
    assert matcher.feed("ny") == ("Pony", False)
    assert matcher.feed(" Pok") == (" ", False)
    assert matcher.flush() == "Pok"


def test_the_earliest_of_several_stop_strings_wins() -> None:
    assert StopMatcher(["world", "lo w"]).feed("hello world") == ("hel", True)


def test_a_stop_string_complete_first_wins_over_one_starting_earlier() -> None:
    # " aa" starts first but "a" is complete first: generation stops there.
    matcher = StopMatcher(["a", " aa"])
    assert matcher.feed(" a") == (" ", True)
    assert StopMatcher(["a", " aa"]).feed(" aa") == (" ", True)


def test_an_empty_stop_list_is_a_bug() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        StopMatcher([""])
