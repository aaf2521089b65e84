"""The frontend's fast path: POSTs to the generation routes skip starlette, nothing else."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from dyn.roles.frontend_admin import AuthMiddleware
from dyn.roles.frontend_fastpath import FastPath

pytestmark = pytest.mark.anyio


async def _fast(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse("fast")(scope, receive, send)


async def _broken(scope: Scope, receive: Receive, send: Send) -> None:
    raise ValueError("a bug")


async def _slow(request: Request) -> Response:
    return PlainTextResponse("slow")


def _client(api_key: str | None = None) -> httpx.AsyncClient:
    app = Starlette(routes=[Route("/v1/completions", _slow, methods=["GET"])])
    auth = AuthMiddleware(app, api_key=api_key, admin_token=None, loopback=True)
    fast = FastPath(app, {"/v1/completions": _fast, "/v1/broken": _broken}, auth)
    transport = httpx.ASGITransport(app=fast, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_only_posts_to_the_listed_paths_take_the_fast_path() -> None:
    async with _client() as http:
        assert (await http.post("/v1/completions")).text == "fast"
        assert (await http.get("/v1/completions")).text == "slow"
        # Only exact paths: starlette answers this one (its slash redirect).
        assert (await http.post("/v1/completions/")).text != "fast"


async def test_the_fast_path_checks_the_api_key_as_the_middleware_does() -> None:
    async with _client(api_key="k") as http:
        refused = await http.post("/v1/completions")
        passed = await http.post("/v1/completions", headers={"authorization": "Bearer k"})
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert passed.text == "fast"


async def test_a_bug_on_the_fast_path_is_a_plain_500() -> None:
    async with _client() as http:
        resp = await http.post("/v1/broken")
    assert resp.status_code == 500
    assert resp.text == "Internal Server Error"
    assert resp.headers["content-type"] == "text/plain; charset=utf-8"
