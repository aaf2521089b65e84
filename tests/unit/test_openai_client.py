"""The official openai client against the routes over a real socket."""

from __future__ import annotations

import httpx
import pytest
from _openai_fakes import MODEL, FakeBackend, serving
from openai import AsyncOpenAI
from prometheus_client import CollectorRegistry, generate_latest

from dyn.observability.metrics import FrontendMetrics
from dyn.openai import OpenAIMetrics

pytestmark = pytest.mark.anyio


def client(url: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=10)


async def test_models_lists_the_served_model() -> None:
    async with serving(FakeBackend()) as url:
        async with client(url) as openai:
            models = await openai.models.list()
        async with httpx.AsyncClient() as http:
            raw = (await http.get(f"{url}/v1/models")).json()
    assert [m.id for m in models.data] == ["test-model"]
    assert raw == {
        "object": "list",
        "data": [
            {
                "id": "test-model",
                "object": "model",
                "created": MODEL.created,
                "owned_by": "dyn",
                "root": "test-model",
                "max_model_len": 128,
            }
        ],
    }


async def test_completion_passes_every_honoured_field() -> None:
    backend = FakeBackend()
    async with serving(backend) as url, client(url) as openai:
        done = await openai.completions.create(
            model="test-model",
            prompt=["Say hi"],
            max_tokens=7,
            temperature=0.5,
            top_p=0.9,
            stop="\n",
            seed=3,
            n=1,
            extra_body={"ignore_eos": True, "min_tokens": 2, "unknown_field": [1]},
        )
    assert done.object == "text_completion"
    assert done.choices[0].text == "Hello world!"
    assert done.choices[0].finish_reason == "length"
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (5, 3)
    assert done.usage.total_tokens == 8
    assert done.usage.prompt_tokens_details is not None
    assert done.usage.prompt_tokens_details.cached_tokens == 2
    (sent,) = backend.requests
    assert (sent.prompt, sent.max_tokens, sent.stop, sent.seed) == ("Say hi", 7, ["\n"], 3)
    assert (sent.temperature, sent.top_p, sent.ignore_eos, sent.min_tokens) == (0.5, 0.9, True, 2)


async def test_chat_renders_the_template_and_reports_cached_tokens() -> None:
    backend = FakeBackend()
    async with serving(backend) as url, client(url) as openai:
        done = await openai.chat.completions.create(
            model="test-model",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi!"}]},
            ],
            max_completion_tokens=9,
        )
    assert done.object == "chat.completion"
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].message.content == "Hello world!"
    assert done.usage is not None
    assert done.usage.prompt_tokens_details is not None
    assert done.usage.prompt_tokens_details.cached_tokens == 2
    (sent,) = backend.requests
    assert sent.prompt == "system: Be brief.\nuser: Hi!\nassistant:"
    assert sent.max_tokens == 9


async def test_chat_without_max_tokens_may_use_the_whole_context() -> None:
    backend = FakeBackend()
    async with serving(backend) as url, client(url) as openai:
        await openai.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "x"}]
        )
    assert backend.requests[0].max_tokens == MODEL.max_model_len


async def test_chat_stream_with_usage() -> None:
    async with serving(FakeBackend()) as url, client(url) as openai:
        stream = await openai.chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert [c.object for c in chunks] == ["chat.completion.chunk"] * 4
    content = chunks[:3]
    assert content[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in content] == ["Hello", " world", "!"]
    assert [c.choices[0].finish_reason for c in content] == [None, None, "length"]
    assert all(c.usage is None for c in content)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens_details is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (5, 3)
    assert last.usage.prompt_tokens_details.cached_tokens == 2
    assert len({c.id for c in chunks}) == 1


async def test_completion_stream_through_the_client() -> None:
    async with serving(FakeBackend()) as url, client(url) as openai:
        stream = await openai.completions.create(
            model="test-model", prompt="Hi", max_tokens=3, stream=True
        )
        texts = [chunk.choices[0].text async for chunk in stream]
    assert texts == ["Hello", " world", "!"]


async def test_metrics_record_latency_and_status() -> None:
    registry = CollectorRegistry()
    metrics = OpenAIMetrics(registry, FrontendMetrics(registry))
    async with serving(FakeBackend(), metrics=metrics) as url, client(url) as openai:
        await openai.completions.create(model="test-model", prompt="Hi", max_tokens=3)
        stream = await openai.completions.create(
            model="test-model", prompt="Hi", max_tokens=3, stream=True
        )
        _ = [chunk async for chunk in stream]
        with pytest.raises(Exception, match="n=2"):
            await openai.completions.create(model="test-model", prompt="Hi", n=2)
    text = generate_latest(registry).decode()
    labels = 'model="test-model",route="/v1/completions"'
    assert f"dyn_frontend_time_to_first_token_seconds_count{{{labels}}} 2.0" in text
    assert f"dyn_frontend_inter_token_latency_seconds_count{{{labels}}} 2.0" in text
    assert f"dyn_frontend_output_sequence_tokens_sum{{{labels}}} 6.0" in text
    assert f"dyn_frontend_cached_prompt_tokens_total{{{labels}}} 4.0" in text
    assert 'dyn_frontend_requests_total{route="/v1/completions",status="200"} 2.0' in text
    assert 'dyn_frontend_requests_total{route="/v1/completions",status="400"} 1.0' in text
    assert 'dyn_frontend_inflight_requests{route="/v1/completions"} 0.0' in text
