"""The OpenAI surface of a real graph (graphs/kv_routing.yaml in this process, its
frontend on a loopback port), spoken to with the official ``openai`` package and httpx:
model cards, error bodies for every 4xx, chat roles, echo, continuous usage, the fields
the simulated engine cannot honour, and a ``max_tokens`` quoted as it was sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from _kv_graph_inprocess import error_of, sdk, serve_kv_graph

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

MODEL = "dyn-mock"
PROMPT = "The quick brown fox"


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with serve_kv_graph() as served:
        yield served


async def test_models_retrieve(url: str) -> None:
    async with sdk(url) as client:
        model = await client.models.retrieve(MODEL)
        with pytest.raises(openai.NotFoundError) as info:
            await client.models.retrieve("gpt-x")
    assert (model.id, model.object, model.owned_by) == (MODEL, "model", "dyn")
    assert model.model_extra is not None
    assert model.model_extra["max_model_len"] == 8096
    assert info.value.body == {
        "message": f"model 'gpt-x' is not served here; available: {MODEL}",
        "type": "not_found_error",
        "param": "model",
        "code": "model_not_found",
    }


async def test_unknown_routes_and_wrong_methods_get_openai_errors(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        unknown = await http.post("/v1/embeddings", json={"model": MODEL, "input": "x"})
        wrong = await http.get("/v1/completions")
    assert unknown.status_code == 404
    missing = error_of(unknown)
    assert missing["type"] == "not_found_error"
    assert missing["code"] == "unknown_route"
    assert missing["message"].startswith("no route POST /v1/embeddings; this server has ")
    assert "POST /v1/completions" in missing["message"]
    assert "GET /v1/models/{model_id}" in missing["message"]
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert error_of(wrong) == {
        "message": "GET /v1/completions is not allowed; /v1/completions takes POST",
        "type": "invalid_request_error",
        "param": None,
        "code": "method_not_allowed",
    }


async def test_chat_roles_are_checked(url: str) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "wizard", "content": "Boo"}]
    body = {"model": MODEL, "messages": messages, "max_tokens": 2}
    async with httpx.AsyncClient(base_url=url) as http:
        bad = await http.post("/v1/chat/completions", json=body)
        for role in ("system", "developer", "user", "assistant", "tool"):
            good = {**body, "messages": [{"role": role, "content": "x"}]}
            assert (await http.post("/v1/chat/completions", json=good)).status_code == 200
    assert bad.status_code == 400
    assert error_of(bad) == {
        "message": "messages[1].role 'wizard' is not a chat role; "
        "use one of system, developer, user, assistant, tool",
        "type": "invalid_request_error",
        "param": "messages[1].role",
        "code": None,
    }


async def test_echo_prepends_the_prompt(url: str) -> None:
    extra = {"ignore_eos": True}
    async with sdk(url) as client:
        plain = await client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=5, seed=1, extra_body=extra
        )
        echoed = await client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=5, seed=1, echo=True, extra_body=extra
        )
        stream = await client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=5, echo=True, stream=True, extra_body=extra
        )
        chunks = [chunk.choices[0].text async for chunk in stream if chunk.choices]
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    assert echoed.usage is not None
    assert echoed.usage.completion_tokens == 5
    assert chunks[0].startswith(PROMPT)
    assert len("".join(chunks)) > len(PROMPT)


async def test_echo_shifts_the_text_offsets_past_the_prompt(url: str) -> None:
    extra = {"ignore_eos": True}
    async with sdk(url) as client:
        echoed = await client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=4, echo=True, logprobs=1, extra_body=extra
        )
    logprobs = echoed.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens is not None
    assert logprobs.text_offset is not None
    text = echoed.choices[0].text
    # Each offset points at its token in the answer, which starts with the prompt.
    assert logprobs.text_offset[0] == len(PROMPT)
    for token, offset in zip(logprobs.tokens, logprobs.text_offset, strict=True):
        assert text[offset : offset + len(token)] == token


async def test_continuous_usage_stats_put_usage_on_every_chunk(url: str) -> None:
    async with sdk(url) as client:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=6,
            stream=True,
            # continuous_usage_stats is vLLM's: the package's types do not have it.
            extra_body={
                "ignore_eos": True,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            },
        )
        chunks = [chunk async for chunk in stream]
    content, final = chunks[:-1], chunks[-1]
    assert content
    assert final.choices == []
    counts = []
    for chunk in content:
        assert chunk.usage is not None
        assert chunk.usage.total_tokens == chunk.usage.prompt_tokens + chunk.usage.completion_tokens
        counts.append(chunk.usage.completion_tokens)
    assert counts == sorted(counts)
    assert counts[0] >= 1
    assert final.usage is not None
    assert counts[-1] == final.usage.completion_tokens == 6


@pytest.mark.parametrize(
    ("extra", "status", "said"),
    [
        ({"response_format": {"type": "json_object"}}, 400, "response_format.type 'json_object'"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, 400, "'json_schema'"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tool_choice 'auto'"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"},
            400,
            "tool_choice 'required'",
        ),
        ({"response_format": {"type": "text"}}, 200, None),
        ({"tools": [], "tool_choice": "auto"}, 200, None),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"},
            200,
            None,
        ),
    ],
)
async def test_fields_the_simulated_engine_cannot_honour_are_400(
    url: str, extra: dict[str, Any], status: int, said: str | None
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    async with httpx.AsyncClient(base_url=url) as http:
        resp = await http.post("/v1/chat/completions", json={**body, **extra})
    assert resp.status_code == status, resp.text
    if said is not None:
        error = error_of(resp)
        assert said in error["message"]
        assert error["type"] == "invalid_request_error"


async def test_max_tokens_beyond_the_context_is_quoted_as_sent(url: str) -> None:
    async with sdk(url) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16300)
        with pytest.raises(openai.BadRequestError) as near:
            # Within the context alone, not with the prompt: refused, never cut short.
            await client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8095)
    assert isinstance(info.value.body, dict)
    assert info.value.body["param"] == "max_tokens"
    assert "max_tokens 16300 asks for more" in info.value.body["message"]
    assert "8096 tokens" in info.value.body["message"]
    assert isinstance(near.value.body, dict)
    assert "prompt tokens + max_tokens 8095 asks for more" in near.value.body["message"]
