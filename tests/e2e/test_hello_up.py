"""`dyn up graphs/hello_world.yaml` as a real process: serve, then exit cleanly on SIGINT."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"dyn up exited early:\n{proc.stderr.read() if proc.stderr else ''}"
            )
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("dyn up did not become healthy")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_dyn_up_serves_hello_world_and_exits_cleanly(sig: signal.Signals) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dyn", "up", "graphs/hello_world.yaml", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_healthy(url, proc)
        with httpx.stream("POST", f"{url}/generate", content=b'{"text":"test"}') as resp:
            lines = list(resp.iter_lines())
        assert lines == ["Frontend: Middle: Backend: test-mid-back"]
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"Serving on {url}" in out
    assert f"curl -N {url}/generate" in out
    assert "frontend up" in err and "backend stopped" in err
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the port is still listening"
