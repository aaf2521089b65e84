"""The mocker's own end of sequence, seeds and logprobs, in virtual time.

Outputs end by themselves with log-normal lengths unless ``ignore_eos``; the stop
decision is a function of the seed, the context and the output position only, so a
request resent with its prompt plus the tokens generated so far (a migration) ends
exactly where it would have.
"""

from __future__ import annotations

import math
import statistics

from hypothesis import given
from hypothesis import strategies as st
from test_mocker_support import FAST, config, drain, tokens_of

from dyn.engines.base import EngineOutput, EngineRequest
from dyn.engines.mocker import MockerConfig, MockerCore
from dyn.engines.mocker.logprobs import simulated_logprobs

SHORT = {"output_length": {"median": 20, "sigma": 0.8}, **FAST}


def _run(cfg: MockerConfig, request: EngineRequest) -> list[EngineOutput]:
    core = MockerCore(cfg)
    core.add(request, 0.0)
    return drain(core)[0][request.request_id]


def _request(tokens: list[int], max_tokens: int, **fields: object) -> EngineRequest:
    return EngineRequest(request_id="r", tokens=tokens, max_tokens=max_tokens, **fields)  # type: ignore[arg-type]


def test_default_lengths_are_log_normal_around_the_configured_median() -> None:
    cfg = config(**FAST)
    core = MockerCore(cfg)
    for i in range(400):
        core.add(EngineRequest(request_id=str(i), tokens=[i, 7, i + 1], max_tokens=8000), 0.0)
    outputs, _, _ = drain(core)
    assert {out[-1].finish_reason for out in outputs.values()} == {"stop"}
    assert all(out[-1].tokens == [cfg.eos_token_id] for out in outputs.values())
    lengths = sorted(len(tokens_of(out)) for out in outputs.values())
    # Median 350, sigma 0.6: the 10th and 90th percentiles are 162 and 757.
    assert 300 <= statistics.median(lengths) <= 400
    assert 130 <= lengths[40] <= 200
    assert 650 <= lengths[360] <= 900
    logs = [math.log(n) for n in lengths]
    assert 0.5 <= statistics.stdev(logs) <= 0.7


@given(
    prompt=st.lists(st.integers(0, 31999), min_size=1, max_size=40),
    seed=st.none() | st.integers(-(2**63), 2**64),
    split=st.integers(1, 200),
    min_tokens=st.integers(0, 30),
)
def test_a_resent_request_continues_and_ends_exactly_as_the_first(
    prompt: list[int], seed: int | None, split: int, min_tokens: int
) -> None:
    cfg = config(**SHORT)
    whole = _run(cfg, _request(prompt, 200, seed=seed, min_tokens=min_tokens))
    tokens = tokens_of(whole)
    assert len(tokens) >= min(min_tokens, 200)
    if split >= len(tokens):
        return
    # What the processor resends after `split` tokens reached the client.
    rest = _run(
        cfg,
        _request(
            prompt + tokens[:split],
            200 - split,
            seed=seed,
            min_tokens=max(0, min_tokens - split),
            prior_output_tokens=split,
        ),
    )
    assert tokens_of(rest) == tokens[split:]
    assert rest[-1].finish_reason == whole[-1].finish_reason


@given(prompt=st.lists(st.integers(0, 31999), min_size=1, max_size=20), floor=st.integers(0, 60))
def test_min_tokens_and_ignore_eos_still_hold(prompt: list[int], floor: int) -> None:
    cfg = config(**SHORT)
    out = _run(cfg, _request(prompt, 80, min_tokens=floor))
    assert len(tokens_of(out)) >= floor
    assert cfg.eos_token_id not in tokens_of(out)[:floor]
    ignored = _run(cfg, _request(prompt, 80, ignore_eos=True))
    assert len(tokens_of(ignored)) == 80
    assert ignored[-1].finish_reason == "length"


def test_output_length_null_runs_to_max_tokens() -> None:
    cfg = config(output_length=None, **FAST)
    out = _run(cfg, _request([5, 6, 7], 300))
    assert len(tokens_of(out)) == 300
    assert out[-1].finish_reason == "length"


@given(prompt=st.lists(st.integers(0, 31999), min_size=1, max_size=20), seed=st.integers())
def test_the_request_seed_changes_the_output_deterministically(
    prompt: list[int], seed: int
) -> None:
    cfg = config(**FAST)
    first = tokens_of(_run(cfg, _request(prompt, 12, seed=seed, ignore_eos=True)))
    again = tokens_of(_run(cfg, _request(prompt, 12, seed=seed, ignore_eos=True)))
    other = tokens_of(_run(cfg, _request(prompt, 12, seed=seed + 1, ignore_eos=True)))
    unseeded = tokens_of(_run(cfg, _request(prompt, 12, ignore_eos=True)))
    assert first == again
    assert first != other
    assert first != unseeded
    # Without a seed the engine's own is used: the output it always gave.
    assert unseeded == tokens_of(_run(cfg, _request(prompt, 12, ignore_eos=True)))


@given(
    digest=st.integers(0, 2**64 - 1),
    top_n=st.integers(0, 20),
    vocab=st.integers(2, 40000),
)
def test_simulated_logprobs_are_a_plausible_distribution(
    digest: int, top_n: int, vocab: int
) -> None:
    token = digest % vocab
    entry = simulated_logprobs(digest, token, top_n, vocab)
    assert entry.logprob < 0
    assert len(entry.top) == min(top_n, vocab)
    if top_n:
        assert entry.top[0] == (token, entry.logprob)
    ids = [t for t, _ in entry.top]
    values = [lp for _, lp in entry.top]
    assert len(set(ids)) == len(ids)
    assert all(0 <= t < vocab for t in ids)
    assert values == sorted(values, reverse=True)
    assert sum(math.exp(lp) for lp in values) <= 1.0 + 1e-9
    assert simulated_logprobs(digest, token, top_n, vocab) == entry


def test_logprobs_come_with_each_token_only_when_asked() -> None:
    cfg = config(**FAST)
    asked = _run(cfg, _request([1, 2, 3], 5, ignore_eos=True, logprobs=3))
    assert all(o.logprobs is not None and len(o.logprobs) == 1 for o in asked)
    assert [o.logprobs[0].top[0][0] for o in asked if o.logprobs] == tokens_of(asked)
    plain = _run(cfg, _request([1, 2, 3], 5, ignore_eos=True))
    assert all(o.logprobs is None for o in plain)
    assert tokens_of(plain) == tokens_of(asked)
