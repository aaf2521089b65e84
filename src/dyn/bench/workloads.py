"""Benchmark workloads: deterministic request records, free of any I/O but a trace file.

Each workload is a list of :class:`WorkItem` records (arrival time, messages, output
length, group or session), made from a seed, so every arm of a comparison and any later
simulation replays exactly the same requests. Prompt text is built from words that the
given tokenizer encodes as one token each (a leading space and letters), so a prompt of
``n`` words is ``n`` tokens for the built-in tokenizer the server uses by default, and
pieces concatenate without changing each other's tokens (a shared prefix stays a shared
token prefix).

- ``shared-prefix``: groups of prompts sharing a system prompt, each with its own
  question (SGLang's ``generated-shared-prefix`` dataset).
- ``multi-turn``: sessions whose every turn sends the whole history plus a new message.
- ``trace:FILE``: a Mooncake JSONL trace replayed by timestamp (``traces/README.md``).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from dyn.errors import DynError
from dyn.tokenizer import Tokenizer

__all__ = [
    "MOONCAKE_BLOCK_TOKENS",
    "WORKLOADS",
    "Message",
    "MultiTurn",
    "SharedPrefix",
    "TraceRecord",
    "Words",
    "WorkItem",
    "make_workload",
    "multi_turn",
    "poisson_arrivals",
    "read_trace",
    "shared_prefix",
    "trace_records",
    "with_arrivals",
]

# Tokens per hash id in Mooncake traces (kvcache-ai/Mooncake FAST25-release README).
MOONCAKE_BLOCK_TOKENS = 512

_WORD = re.compile(r" [a-z]{2,}")

WORKLOADS = ("shared-prefix", "multi-turn", "trace:FILE")


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class WorkItem:
    """One request to send.

    ``arrival_s`` is the offset from the start of the run (``None``: no schedule of its
    own; :func:`with_arrivals` gives one). ``after`` is the index of an item that must
    finish first (the previous turn of a conversation). ``input_len`` counts the tokens of
    :attr:`prompt` with the workload's tokenizer.
    """

    index: int
    messages: tuple[Message, ...]
    input_len: int
    output_len: int
    group: int
    turn: int = 0
    arrival_s: float | None = None
    after: int | None = None

    @property
    def prompt(self) -> str:
        """The messages as one completion prompt (their contents, back to back)."""
        return "".join(m.content for m in self.messages)


class Words:
    """The single-token words of a tokenizer, and text of an exact token count."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        words = []
        for token_id in range(tokenizer.vocab_size):
            piece = tokenizer.decode([token_id])
            if _WORD.fullmatch(piece) and tokenizer.encode(piece) == [token_id]:
                words.append(piece)
        if len(words) < 100:
            raise DynError("the tokenizer has too few single-token words to build prompts")
        self.words: Sequence[str] = tuple(words)

    def text(self, tokens: int, rng: random.Random) -> str:
        """``tokens`` words drawn by ``rng``, each with its leading space."""
        return "".join(rng.choices(self.words, k=tokens))


@dataclass(frozen=True)
class SharedPrefix:
    # SGLang bench_serving's generated-shared-prefix defaults.
    groups: int = 64
    prompts_per_group: int = 16
    system_prompt_len: int = 2048
    question_len: int = 128
    output_len: int = 256
    # Skewed popularity: each request's group is drawn, group k with weight 1/(k+1)^zipf;
    # None gives every group exactly prompts_per_group requests.
    zipf: float | None = None


@dataclass(frozen=True)
class MultiTurn:
    sessions: int = 64
    turns: int = 4
    question_len: int = 128
    output_len: int = 256


def shared_prefix(spec: SharedPrefix, words: Words, seed: int) -> list[WorkItem]:
    """Every group's prompts share its system prompt; the order mixes the groups."""
    rng = random.Random(seed)
    pairs: list[tuple[int, str, str]] = []
    if spec.zipf is None:
        for group in range(spec.groups):
            system = words.text(spec.system_prompt_len, rng)
            pairs += [
                (group, system, words.text(spec.question_len, rng))
                for _ in range(spec.prompts_per_group)
            ]
        # Back-to-back groups would let any strategy find the prefix it just cached; a mix
        # is what a shared deployment sees, and what separates cache-aware routing.
        rng.shuffle(pairs)
    else:
        systems = [words.text(spec.system_prompt_len, rng) for _ in range(spec.groups)]
        weights = [1 / (k + 1) ** spec.zipf for k in range(spec.groups)]
        drawn = rng.choices(range(spec.groups), weights, k=spec.groups * spec.prompts_per_group)
        pairs = [(g, systems[g], words.text(spec.question_len, rng)) for g in drawn]
    return [
        WorkItem(
            index=i,
            messages=(Message("system", system), Message("user", question)),
            input_len=spec.system_prompt_len + spec.question_len,
            output_len=spec.output_len,
            group=group,
        )
        for i, (group, system, question) in enumerate(pairs)
    ]


def multi_turn(spec: MultiTurn, words: Words, seed: int) -> list[WorkItem]:
    """Turn ``t`` of a session is its history (earlier questions and answers) plus a new
    question; it waits for turn ``t - 1``. Items come turn by turn across sessions.

    The answers in the history are made here, not taken from the server, so every arm
    and every run sends the same prompts.
    """
    rng = random.Random(seed)
    history: list[list[Message]] = [[] for _ in range(spec.sessions)]
    previous: list[int | None] = [None] * spec.sessions
    items: list[WorkItem] = []
    for turn in range(spec.turns):
        for session in range(spec.sessions):
            messages = [*history[session], Message("user", words.text(spec.question_len, rng))]
            items.append(
                WorkItem(
                    index=len(items),
                    messages=tuple(messages),
                    input_len=turn * (spec.question_len + spec.output_len) + spec.question_len,
                    output_len=spec.output_len,
                    group=session,
                    turn=turn,
                    after=previous[session],
                )
            )
            previous[session] = items[-1].index
            answer = Message("assistant", words.text(spec.output_len, rng))
            history[session] = [*messages, answer]
    return items


@dataclass(frozen=True)
class TraceRecord:
    """One line of a Mooncake trace, its arrival already scaled by the replay speed-up."""

    line_no: int
    arrival_s: float
    input_len: int
    output_len: int
    hash_ids: tuple[int, ...]


def trace_records(
    path: str | Path, *, speedup: float = 1.0, limit: int | None = None
) -> Iterator[TraceRecord]:
    """The records of a Mooncake JSONL trace, arrivals at ``timestamp / speedup``.

    Raises :class:`DynError` for a missing file or a malformed line.
    """
    if speedup <= 0:
        raise DynError(f"--trace-speedup must be positive, got {speedup}")
    try:
        # Opened outside the `with` so that only a failure to open reads "cannot read".
        handle = Path(path).open(encoding="utf-8")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise DynError(f"cannot read trace {path}: {exc.strerror}") from exc
    with handle:
        count = 0
        for line_no, line in enumerate(handle, 1):
            if limit is not None and count >= limit:
                return
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                stamp_ms = float(record["timestamp"])
                input_len = int(record["input_length"])
                output_len = int(record["output_length"])
                hash_ids = tuple(int(h) for h in record["hash_ids"])
            except (ValueError, KeyError, TypeError) as exc:
                raise DynError(
                    f"{path}:{line_no}: not a Mooncake trace record "
                    "(timestamp, input_length, output_length, hash_ids)"
                ) from exc
            yield TraceRecord(line_no, stamp_ms / 1000 / speedup, input_len, output_len, hash_ids)
            count += 1


def read_trace(
    path: str | Path,
    words: Words,
    seed: int,
    *,
    speedup: float = 1.0,
    limit: int | None = None,
) -> Iterator[WorkItem]:
    """Replay a Mooncake trace: arrivals at ``timestamp / speedup``, each block's text made
    from its hash id (equal ids, equal text) and the prompt trimmed to ``input_length``.

    Raises :class:`DynError` for a missing file or a malformed line.
    """
    blocks: dict[int, list[str]] = {}  # recently made blocks: most ids repeat nearby
    for count, record in enumerate(trace_records(path, speedup=speedup, limit=limit)):
        input_len = record.input_len
        tokens: list[str] = []
        for hash_id in record.hash_ids:
            if len(tokens) >= input_len:
                break
            tokens += _block(blocks, hash_id, words, seed)
        if len(tokens) < input_len:  # a trace longer than its blocks: pad uniquely
            pad = random.Random(f"{seed}/pad/{record.line_no}")
            tokens += pad.choices(words.words, k=input_len - len(tokens))
        yield WorkItem(
            index=count,
            messages=(Message("user", "".join(tokens[:input_len])),),
            input_len=input_len,
            output_len=max(1, record.output_len),
            group=record.hash_ids[0] if record.hash_ids else -1,
            arrival_s=record.arrival_s,
        )


def _block(cache: dict[int, list[str]], hash_id: int, words: Words, seed: int) -> list[str]:
    block = cache.get(hash_id)
    if block is None:
        if len(cache) >= 4096:
            cache.clear()
        rng = random.Random(seed * 2**40 + hash_id)
        block = cache[hash_id] = rng.choices(words.words, k=MOONCAKE_BLOCK_TOKENS)
    return block


def poisson_arrivals(count: int, rate: float, seed: int) -> list[float]:
    """Arrival offsets of a Poisson process of ``rate`` requests/s (all 0 for ``inf``)."""
    if math.isinf(rate):
        return [0.0] * count
    if rate <= 0:
        raise DynError(f"--request-rate must be positive, got {rate}")
    rng = random.Random(seed)
    now, out = 0.0, []
    for _ in range(count):
        now += rng.expovariate(rate)
        out.append(now)
    return out


def with_arrivals(items: Sequence[WorkItem], rate: float, seed: int) -> list[WorkItem]:
    """``items`` with Poisson arrival offsets, keeping any they already have."""
    times = poisson_arrivals(len(items), rate, seed)
    return [
        item if item.arrival_s is not None else replace(item, arrival_s=at)
        for item, at in zip(items, times, strict=True)
    ]


def make_workload(
    name: str,
    words: Words,
    seed: int,
    *,
    shared: SharedPrefix | None = None,
    multi: MultiTurn | None = None,
    trace_speedup: float = 1.0,
    limit: int | None = None,
) -> list[WorkItem]:
    """The first ``limit`` items of the workload called ``name`` (see :data:`WORKLOADS`)."""
    if name == "shared-prefix":
        items = shared_prefix(shared or SharedPrefix(), words, seed)
    elif name == "multi-turn":
        items = multi_turn(multi or MultiTurn(), words, seed)
    elif name.startswith("trace:") and len(name) > len("trace:"):
        path = name.removeprefix("trace:")
        return list(read_trace(path, words, seed, speedup=trace_speedup, limit=limit))
    else:
        raise DynError(f"unknown workload {name!r}; available: {', '.join(WORKLOADS)}")
    return items if limit is None else items[:limit]
