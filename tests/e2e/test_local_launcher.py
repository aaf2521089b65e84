"""`dyn up --transport tcp|grpc`: one OS process per role, file discovery, clean teardown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from dyn.discovery.file import FileDiscovery

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "graphs" / "hello_world.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes; its parent has not reaped it yet.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


class Up:
    """A `dyn up` process with its own state directory."""

    def __init__(self, state: Path, *args: str) -> None:
        self.state = state
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dyn", "up", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "DYN_STATE_DIR": str(state), "PYTHONUNBUFFERED": "1"},
            cwd=ROOT,
        )

    def wait_healthy(self, url: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dyn up exited early:\n{self.proc.stderr.read()}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("dyn up did not become healthy")

    def record(self) -> dict[str, object]:
        (run,) = (self.state / "runs").iterdir()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            record = json.loads((run / "run.json").read_text())
            if record["frontend_url"]:
                return dict(record)
            time.sleep(0.05)
        raise AssertionError("the run record never named the frontend")

    def stop(self, sig: signal.Signals = signal.SIGINT) -> tuple[str, str]:
        self.proc.send_signal(sig)
        return self.proc.communicate(timeout=60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "state"


@pytest.mark.parametrize("transport", ["tcp", "grpc"])
def test_hello_world_as_separate_processes(state: Path, transport: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    up = Up(state, str(HELLO), "--transport", transport, "--port", str(port))
    try:
        up.wait_healthy(url)
        with httpx.stream("POST", f"{url}/generate", content=b'{"text":"test"}') as resp:
            assert list(resp.iter_lines()) == ["Frontend: Middle: Backend: test-mid-back"]
        record = up.record()
        roles = {r["role"]: r["pid"] for r in record["roles"]}  # type: ignore[attr-defined]
        assert set(roles) == {"frontend", "middle", "backend"}
        assert len(set(roles.values())) == 3 and os.getpid() not in roles.values()
        assert all(pid_alive(pid) for pid in roles.values())
        addresses = [r["address"] for r in record["roles"] if r["address"]]  # type: ignore[attr-defined]
        assert addresses and all(a.startswith(f"{transport}://") for a in addresses)
        out, err = up.stop()
    finally:
        up.kill()
    assert up.proc.returncode == 0, err
    assert "backend stopped" in err
    assert all(not pid_alive(pid) for pid in roles.values()), "a role process is left"
    for address in [url, *addresses]:
        host, role_port = address.split("://")[1].rsplit(":", 1)
        with socket.socket() as s:
            assert s.connect_ex((host, int(role_port))) != 0, f"{address} still listens"


def test_sigkilled_role_leaves_discovery_within_ttl(state: Path, tmp_path: Path) -> None:
    ttl = 1.0
    graph = tmp_path / "hello.yaml"
    graph.write_text(
        HELLO.read_text().replace(
            "discovery: memory", f"discovery: {{backend: file, ttl_s: {ttl}}}"
        )
    )
    port = free_port()
    up = Up(state, str(graph), "--transport", "tcp", "--port", str(port))
    try:
        up.wait_healthy(f"http://127.0.0.1:{port}")
        record = up.record()
        backend_pid = next(r["pid"] for r in record["roles"] if r["role"] == "backend")  # type: ignore[attr-defined]
        discovery_dir = str(record["discovery_dir"])

        async def gone_after_kill() -> float:
            async with FileDiscovery(ttl_s=ttl, path=discovery_dir) as discovery:
                assert await discovery.snapshot("hello/backend/")
                killed = time.monotonic()
                os.kill(backend_pid, signal.SIGKILL)
                with anyio.fail_after(ttl + 5):
                    async for instances in discovery.watch("hello/backend/"):
                        if not instances:
                            return time.monotonic() - killed
            raise AssertionError("the watch ended")

        elapsed = anyio.run(gone_after_kill)
        print(f"\nbackend left discovery {elapsed:.2f} s after SIGKILL (TTL {ttl} s)")
        assert elapsed <= ttl + 1
        up.stop()
    finally:
        up.kill()


def test_role_crash_during_startup_fails_up_with_its_log(state: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        up = Up(state, str(HELLO), "--transport", "tcp", "--port", str(port))
        try:
            out, err = up.proc.communicate(timeout=60)
        finally:
            up.kill()
    assert up.proc.returncode == 1
    assert "role 'frontend' exited with code 1 during start-up" in err
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "Traceback" not in err
