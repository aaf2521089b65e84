"""The generation parameters through `dyn up` (simulated workers, tcp between processes),
spoken to with the official ``openai`` SDK: outputs end by themselves, ``stop``,
``seed`` and ``logprobs`` / ``top_logprobs`` in OpenAI's shapes, and their 400s."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import openai
import pytest
from _dyn_graph import dyn_up, free_port, metrics_pages

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
GRAPH = ROOT / "graphs" / "kv_routing.yaml"
MODEL = "dyn-mock"
LONG = 2000  # tokens a request may run to when it ignores end of sequence


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("generation") / "up.log"
    # A cache that holds a whole context (chat without max_tokens asks for it all).
    sets = ("worker.replicas=2", "worker.speedup_ratio=20", "worker.num_gpu_blocks=1100")
    with dyn_up(GRAPH, port, log_path, *sets):
        url = f"http://127.0.0.1:{port}"
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as sdk:
            yield sdk


def _worker_tokens(client: openai.OpenAI) -> float:
    """Tokens the workers generated after each request's first: the count of the
    workers' inter-token gaps, summed over every process of the run."""
    total = 0.0
    base = str(client.base_url).removesuffix("/v1/")
    for page in metrics_pages(base):
        found = re.findall(r"^dyn_worker_inter_token_latency_seconds_count\S* (\S+)$", page, re.M)
        total += sum(map(float, found))
    return total


def test_a_streamed_chat_ends_by_itself(client: openai.OpenAI) -> None:
    lengths = []
    for i in range(4):
        messages: Any = [{"role": "user", "content": f"Tell me story number {i}"}]
        with client.chat.completions.stream(model=MODEL, messages=messages) as stream:
            final = stream.get_final_completion()  # raised LengthFinishReasonError before
        assert final.choices[0].finish_reason == "stop"
        lengths.append(len(final.choices[0].message.content or ""))
    assert len(set(lengths)) > 1  # lengths vary with the context
    completion = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=LONG)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens < LONG


def test_stop_strings_cut_the_text_and_stop_the_worker(client: openai.OpenAI) -> None:
    ignore = {"ignore_eos": True}
    full = client.completions.create(
        model=MODEL, prompt="Poker night", max_tokens=40, extra_body=ignore
    ).choices[0]
    # A stop string made of the end of one word and the start of the next (two tokens).
    words = full.text.split(" ")
    stop = f"{words[4][-2:]} {words[5][:2]}"
    expected = full.text[: full.text.index(stop)]
    before = _worker_tokens(client)
    cut = client.completions.create(
        model=MODEL, prompt="Poker night", max_tokens=LONG, stop=[stop, "never there"],
        extra_body=ignore,
    )  # fmt: skip
    assert cut.choices[0].text == expected
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage is not None
    assert cut.usage.completion_tokens < 20
    streamed = client.completions.create(
        model=MODEL, prompt="Poker night", max_tokens=LONG, stop=stop, stream=True,
        extra_body=ignore,
    )  # fmt: skip
    chunks = [c.choices[0] for c in streamed if c.choices]
    assert "".join(c.text for c in chunks) == expected
    assert chunks[-1].finish_reason == "stop"
    # Running on, the two requests would have generated 2 x 2000 tokens by now (2000
    # tokens take ~0.6 s at speedup 20); cancelled, each stops a few dozen tokens past
    # its stop string (the time the cancellation takes to reach the worker).
    time.sleep(1.0)
    assert _worker_tokens(client) - before < LONG / 2


def test_the_seed_picks_the_output(client: openai.OpenAI) -> None:
    def text(seed: int | None) -> str:
        extra = {"ignore_eos": True}
        reply = client.completions.create(
            model=MODEL, prompt="Pick a card", max_tokens=12, seed=seed, extra_body=extra
        )
        return reply.choices[0].text

    assert text(7) == text(7)
    assert text(7) != text(8)
    assert text(None) == text(None) != text(7)


def test_chat_logprobs_have_openai_s_shape(client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Hi"}]
    reply = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=5, logprobs=True, top_logprobs=3,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.logprobs is not None
    assert choice.logprobs.content is not None
    content = choice.logprobs.content
    assert len(content) == 5
    assert "".join(t.token for t in content) == choice.message.content
    for token in content:
        assert token.logprob < 0
        assert bytes(token.bytes or []).decode() == token.token
        assert len(token.top_logprobs) == 3
        assert (token.top_logprobs[0].token, token.top_logprobs[0].logprob) == (
            token.token,
            token.logprob,
        )
        assert [t.logprob for t in token.top_logprobs] == sorted(
            (t.logprob for t in token.top_logprobs), reverse=True
        )
    streamed = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=5, logprobs=True, top_logprobs=3,
        stream=True, extra_body={"ignore_eos": True},
    )  # fmt: skip
    pieces = [
        t
        for c in streamed
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or []
    ]
    assert pieces == content  # the same values, deterministic


def test_completion_logprobs_have_openai_s_shape(client: openai.OpenAI) -> None:
    extra = {"ignore_eos": True}
    reply = client.completions.create(
        model=MODEL, prompt="Hi", max_tokens=4, logprobs=2, extra_body=extra
    )
    choice = reply.choices[0]
    lp = choice.logprobs
    assert lp is not None
    assert lp.tokens
    assert lp.token_logprobs
    assert lp.top_logprobs
    assert lp.text_offset is not None
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(4)]
    assert all(value < 0 for value in lp.token_logprobs)
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) == 2
        assert top[token] == value
    plain = client.completions.create(model=MODEL, prompt="Hi", max_tokens=4, extra_body=extra)
    assert plain.choices[0].logprobs is None
    assert plain.choices[0].text == choice.text


@pytest.mark.parametrize(
    ("route", "fields", "param"),
    [
        ("chat", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("chat", {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ("chat", {"top_logprobs": 2}, "top_logprobs"),
        ("completion", {"logprobs": 6}, "logprobs"),
        ("completion", {"logprobs": -1}, "logprobs"),
    ],
)
def test_logprobs_out_of_range_are_400_naming_the_param(
    client: openai.OpenAI, route: str, fields: dict[str, Any], param: str
) -> None:
    messages: Any = [{"role": "user", "content": "Hi"}]
    create: Any = (
        partial(client.chat.completions.create, messages=messages)
        if route == "chat"
        else partial(client.completions.create, prompt="Hi")
    )
    with pytest.raises(openai.BadRequestError) as caught:
        create(model=MODEL, max_tokens=2, extra_body=fields)
    assert caught.value.status_code == 400
    body: Any = caught.value.body
    assert body["param"] == param
    assert param in body["message"]
