"""API keys and admin tokens on the frontend."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from _dyn_graph import DynUp, free_port
from _inprocess import serve_graph
from _streams import KV_GRAPH, completion_body

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

KEY = "sk-test-key"


async def test_api_key_guards_every_route_but_health_and_metrics() -> None:
    port = free_port()
    async with (
        serve_graph(str(KV_GRAPH), f"frontend.port={port}", f"frontend.api_key={KEY}"),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
    ):
        body = {**completion_body("hi", 4), "stream": False}
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": KEY}):
            for method, path in (("POST", "/v1/completions"), ("GET", "/v1/models")):
                resp = await http.request(
                    method, path, json=body if method == "POST" else None, headers=headers
                )
                assert resp.status_code == 401, (path, headers)
                error = resp.json()["error"]
                assert error["type"] == "authentication_error"
                assert error["code"] == "invalid_api_key"
                assert "Bearer" in error["message"]
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/metrics")).status_code == 200
        auth = {"authorization": f"Bearer {KEY}"}
        ok = await http.post("/v1/completions", json=body, headers=auth)
        assert ok.status_code == 200
        assert ok.json()["usage"]["completion_tokens"] == 4
        # On loopback and without an admin token the admin routes stay open.
        assert (await http.get("/admin/route")).status_code == 200


async def test_admin_routes_need_the_token_beyond_loopback() -> None:
    port = free_port()
    async with (
        serve_graph(str(KV_GRAPH), f"frontend.port={port}", "frontend.host=0.0.0.0"),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
    ):
        refused = await http.get("/admin/route")
        assert refused.status_code == 403
        assert "admin_token" in refused.json()["error"]["message"]
    port = free_port()
    async with (
        serve_graph(
            str(KV_GRAPH),
            f"frontend.port={port}",
            "frontend.host=0.0.0.0",
            "frontend.admin_token=t0k",
        ),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
    ):
        assert (await http.get("/admin/route")).status_code == 401
        wrong = await http.get("/admin/route", headers={"authorization": "Bearer x"})
        assert wrong.status_code == 401
        good = await http.get("/admin/route", headers={"authorization": "Bearer t0k"})
        assert good.status_code == 200
        assert good.json()["strategy"] == "kv"


@pytest.mark.e2e
def test_dyn_up_api_key_reaches_the_frontend_process(tmp_path: Path) -> None:
    up = DynUp(
        str(KV_GRAPH),
        "--transport",
        "tcp",
        "--api-key",
        KEY,
        state=tmp_path / "state",
        log_path=tmp_path / "up.log",
    )
    try:
        up.wait_healthy()
        body = {**completion_body("hi", 2), "stream": False}
        assert httpx.post(f"{up.url}/v1/completions", json=body, timeout=30).status_code == 401
        auth = {"authorization": f"Bearer {KEY}"}
        resp = httpx.post(f"{up.url}/v1/completions", json=body, headers=auth, timeout=30)
        assert resp.status_code == 200
    finally:
        up.stop()


async def test_dashboard_is_guarded_like_the_admin_routes_beyond_loopback() -> None:
    port = free_port()
    async with (
        serve_graph(str(KV_GRAPH), f"frontend.port={port}", "frontend.host=0.0.0.0"),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
    ):
        for path in ("/dashboard", "/dashboard/dashboard.js", "/admin/dashboard/data"):
            refused = await http.get(path)
            assert refused.status_code == 403, path
            assert "admin_token" in refused.json()["error"]["message"]
        # Without a token to check, a token in the address opens nothing.
        assert (await http.get("/dashboard", params={"token": "x"})).status_code == 403
    port = free_port()
    async with (
        serve_graph(
            str(KV_GRAPH),
            f"frontend.port={port}",
            "frontend.host=0.0.0.0",
            "frontend.admin_token=t0k",
        ),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
    ):
        for path in ("/dashboard", "/admin/dashboard/data", "/admin/route/decisions"):
            assert (await http.get(path)).status_code == 401, path
        wrong = await http.get("/dashboard", params={"token": "x"})
        assert wrong.status_code == 401
        assert "dashboard?token=" in wrong.json()["error"]["message"]
        assert "set-cookie" not in wrong.headers
        bearer = {"authorization": "Bearer t0k"}
        assert (await http.get("/admin/dashboard/data", headers=bearer)).status_code == 200
        # The token in the address, once: a cookie for the page, and the bare address.
        login = await http.get("/dashboard", params={"token": "t0k"})
        assert login.status_code == 303
        assert login.headers["location"] == "/dashboard"
        cookie = login.headers["set-cookie"]
        assert cookie.startswith(f"dyn_admin_{port}=t0k")
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert "Path=/" in cookie
        assert (await http.get("/dashboard")).status_code == 200  # the client kept it
        data = await http.get("/admin/dashboard/data")
        assert data.status_code == 200
        assert data.json()["strategy"] == "kv"
        assert (await http.get("/admin/route/decisions")).status_code == 200
        # A cookie alone never changes anything: a switch still needs the header.
        switch = await http.post("/admin/route", json={"strategy": "round_robin"})
        assert switch.status_code == 401
        assert (await http.get("/admin/route", headers=bearer)).json()["strategy"] == "kv"
        # Another frontend's cookie (another port) is not this one's.
        http.cookies.clear()
        other = {"cookie": "dyn_admin_1=t0k"}
        assert (await http.get("/dashboard", headers=other)).status_code == 401
