"""Error bodies that look the same whichever part of a real graph refuses the request
(graphs/kv_routing.yaml in this process, its frontend on a loopback port): a wrong
method names every method the path takes, and a 400 from the processor or a worker
names the client's field in ``param`` as the frontend's own checks do."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from _kv_graph_inprocess import error_of, sdk, serve_kv_graph

from dyn.errors import BadRequestError, call_error_from_wire
from dyn.transports._serving import error_to_wire

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

MODEL = "dyn-mock"
# The graph's model has max_model_len 8096; its tokenizer counts one token per word.
LONG_PROMPT = " ".join(["word"] * 8001)
TOO_LONG_PROMPT = " ".join(["word"] * 8200)


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with serve_kv_graph() as served:
        yield served


def body_of(info: pytest.ExceptionInfo[openai.BadRequestError]) -> dict[str, Any]:
    body = info.value.body
    assert isinstance(body, dict)
    return body


async def test_a_wrong_method_names_every_method_of_the_path(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        put = await http.put("/admin/route", json={})
        delete = await http.delete("/admin/route/explain")
        get = await http.get("/admin/route")
    assert get.status_code == 200, get.text
    assert put.status_code == 405
    assert put.headers["allow"] == "GET, HEAD, POST"
    assert error_of(put) == {
        "message": "PUT /admin/route is not allowed; /admin/route takes GET, HEAD, POST",
        "type": "invalid_request_error",
        "param": None,
        "code": "method_not_allowed",
    }
    # A path of one route says just its own.
    assert delete.status_code == 405
    assert delete.headers["allow"] == "POST"


async def test_the_processors_context_refusal_names_the_clients_field(url: str) -> None:
    async with sdk(url) as client:
        with pytest.raises(openai.BadRequestError) as completion:
            await client.completions.create(model=MODEL, prompt=LONG_PROMPT, max_tokens=97)
        with pytest.raises(openai.BadRequestError) as chat:
            await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": LONG_PROMPT}],
                max_completion_tokens=97,
            )
        with pytest.raises(openai.BadRequestError) as chat_alone:
            # No cap: the prompt alone leaves no room for one token.
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": TOO_LONG_PROMPT}]
            )
        with pytest.raises(openai.BadRequestError) as completion_alone:
            await client.completions.create(model=MODEL, prompt=TOO_LONG_PROMPT)
    assert body_of(completion)["param"] == "max_tokens"
    assert "8001 prompt tokens + max_tokens 97 asks for more" in body_of(completion)["message"]
    assert body_of(chat)["param"] == "max_completion_tokens"
    assert "max_completion_tokens 97 asks for more" in body_of(chat)["message"]
    assert body_of(chat_alone)["param"] == "messages"
    assert "the prompt alone has" in body_of(chat_alone)["message"]
    assert body_of(completion_alone)["param"] == "prompt"
    assert "the prompt alone has 8200" in body_of(completion_alone)["message"]
    for info in (completion, chat, chat_alone, completion_alone):
        assert body_of(info)["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ],
)
async def test_the_workers_refusal_of_a_field_names_it(
    url: str, extra: dict[str, Any], field: str
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    async with httpx.AsyncClient(base_url=url) as http:
        resp = await http.post("/v1/chat/completions", json={**body, **extra})
    assert resp.status_code == 400, resp.text
    assert error_of(resp)["param"] == field


def test_a_param_crosses_the_wire_and_its_absence_too() -> None:
    sent = BadRequestError("max_tokens 97 asks for more", param="max_tokens")
    received = call_error_from_wire(*error_to_wire(sent))
    assert isinstance(received, BadRequestError)
    assert (received.message, received.param) == (sent.message, "max_tokens")
    plain = call_error_from_wire(*error_to_wire(BadRequestError("bad")))
    assert isinstance(plain, BadRequestError)
    assert (plain.code, plain.param) == ("bad_request", None)
