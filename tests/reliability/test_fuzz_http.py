"""Hostile bodies on the generation routes: always 200 or a 4xx OpenAI error body, never a
500 or a traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from _openai_fakes import MODEL, FakeBackend

from dyn.openai.routes import build_openai_routes

pytestmark = pytest.mark.timeout(120)

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
FIELDS = [
    "model",
    "prompt",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "ignore_eos",
    "min_tokens",
]
messages = st.lists(
    st.fixed_dictionaries({"role": json_values, "content": json_values}) | json_values,
    max_size=3,
)
bodies: st.SearchStrategy[Any] = (
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)
    | st.fixed_dictionaries(
        {"model": st.sampled_from([MODEL.id, "other"]), "messages": messages},
        optional={f: json_values for f in FIELDS if f not in ("model", "messages")},
    )
    | st.fixed_dictionaries(
        {"model": st.just(MODEL.id), "prompt": json_values},
        optional={"max_tokens": json_values, "stream": json_values},
    )
    | json_values
)


@pytest.fixture(scope="module")
def http() -> Any:
    app = Starlette(routes=build_openai_routes(FakeBackend(), MODEL, max_body_bytes=4096))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _check(resp: Any) -> None:
    assert resp.status_code == 200 or 400 <= resp.status_code < 500, resp.text
    assert "Traceback" not in resp.text
    if resp.status_code != 200:
        error = resp.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str)
        assert error["message"]


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, chat=st.booleans())
def test_fuzzed_json_bodies_get_an_openai_answer(http: Any, body: Any, chat: bool) -> None:
    path = "/v1/chat/completions" if chat else "/v1/completions"
    _check(http.post(path, content=json.dumps(body, allow_nan=True)))


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=6000), chat=st.booleans())
def test_fuzzed_raw_bytes_get_an_openai_answer(http: Any, raw: bytes, chat: bool) -> None:
    path = "/v1/chat/completions" if chat else "/v1/completions"
    _check(http.post(path, content=raw))
