"""`dyn up --transport tcp|grpc`: one OS process per role, file discovery, clean teardown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest
from _dyn_graph import DynUp, port_is_listening

from dyn.discovery.file import FileDiscovery
from dyn.launch.layout import core_count

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "graphs" / "hello_world.yaml"
KV_ROUTING = ROOT / "graphs" / "kv_routing.yaml"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes; its parent has not reaped it yet.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.mark.parametrize("transport", ["tcp", "grpc"])
def test_hello_world_as_separate_processes(state: Path, transport: str) -> None:
    up = DynUp(
        str(HELLO),
        "--transport",
        transport,
        "--layout",
        "process-per-role",
        state=state,
        log_path=state.parent / "up.log",
    )
    url = up.url
    try:
        up.wait_healthy(timeout=30)
        with httpx.stream("POST", f"{url}/generate", content=b'{"text":"test"}') as resp:
            assert list(resp.iter_lines()) == ["Frontend: Middle: Backend: test-mid-back"]
        record = up.record()
        roles = {r["role"]: r["pid"] for r in record["roles"]}
        assert set(roles) == {"frontend", "middle", "backend"}
        assert len(set(roles.values())) == 3
        assert os.getpid() not in roles.values()
        assert all(pid_alive(pid) for pid in roles.values())
        addresses = [r["address"] for r in record["roles"] if r["address"]]
        assert addresses
        assert all(a.startswith(f"{transport}://") for a in addresses)
        up.stop()
    finally:
        up.kill()
    err = up.log()
    assert up.returncode == 0, err
    assert "backend stopped" in err
    assert all(not pid_alive(pid) for pid in roles.values()), "a role process is left"
    for address in [url, *addresses]:
        host, role_port = address.split("://")[1].rsplit(":", 1)
        assert not port_is_listening(int(role_port), host), f"{address} still listens"


def test_auto_layout_hosts_each_processor_beside_a_frontend_and_leaves_nothing(
    state: Path,
) -> None:
    cores = core_count()
    if cores < 2:
        pytest.skip("one core: the auto layout runs the graph in one process")
    workers = 4
    up = DynUp(
        str(KV_ROUTING),
        "--set",
        f"worker.replicas={workers}",
        "--set",
        "worker.speedup_ratio=20",
        "--front-processes",
        "2",
        state=state,
        log_path=state.parent / "up.log",
    )
    url = up.url
    try:
        up.wait_healthy(timeout=60)
        body = {"model": "dyn-mock", "prompt": "Hello there", "max_tokens": 3}
        for _ in range(8):  # fresh connections: any front process may answer
            answer = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
            assert answer.status_code == 200, answer.text
            assert answer.json()["usage"]["completion_tokens"] == 3
        record = up.record()
        assert record["transport"] == "tcp"
        assert "front processes (processor + frontend)" in record["layout"]
        pids = {r["role"]: r["pid"] for r in record["roles"]}
        fronts = 2  # as pinned
        expected = {f"frontend[{i}]" for i in range(fronts)} | {
            f"processor[{i}]" for i in range(fronts)
        }
        assert set(pids) == expected | {f"worker[{i}]" for i in range(workers)}
        for i in range(fronts):
            assert pids[f"frontend[{i}]"] == pids[f"processor[{i}]"]
        # The auto rule spreads a component's replicas over at most one process per
        # core: worker r in process r mod that count.
        engines = min(workers, cores)
        for i in range(workers):
            assert pids[f"worker[{i}]"] == pids[f"worker[{i % engines}]"]
        assert len(set(pids.values())) == fronts + engines
        # A role that shares a process has that process's log.
        shown = subprocess.run(
            [sys.executable, "-m", "dyn", "logs", "processor[0]"],
            env={**os.environ, "DYN_STATE_DIR": str(state)},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert shown.returncode == 0, shown.stderr
        assert "processor[0] shares its process with frontend[0]" in shown.stderr
        addresses = [r["address"] for r in record["roles"] if r["address"]]
        pages = {r["metrics_url"] for r in record["roles"] if r.get("metrics_url")}
        assert len(pages) == fronts + engines  # one metrics page per role process
        up.stop()
    finally:
        up.kill()
    assert up.returncode == 0, up.log()
    assert all(not pid_alive(pid) for pid in pids.values()), "a role process is left"
    for address in [url, *addresses, *pages]:
        host, role_port = address.split("://")[1].split("/")[0].rsplit(":", 1)
        assert not port_is_listening(int(role_port), host), f"{address} still listens"


def test_sigkilled_role_leaves_discovery_within_ttl(state: Path, tmp_path: Path) -> None:
    ttl = 1.0
    graph = tmp_path / "hello.yaml"
    graph.write_text(
        HELLO.read_text().replace(
            "discovery: memory", f"discovery: {{backend: file, ttl_s: {ttl}}}"
        )
    )
    up = DynUp(str(graph), "--transport", "tcp", state=state, log_path=tmp_path / "up.log")
    try:
        up.wait_healthy(timeout=30)
        record = up.record()
        backend_pid = next(r["pid"] for r in record["roles"] if r["role"] == "backend")
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


def up_on_a_taken_port(state: Path, *args: str) -> tuple[DynUp, int]:
    """`dyn up ARGS` on a port another socket listens on; returns once it has exited."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        up = DynUp(*args, port=port, state=state, log_path=state.parent / "up.log")
        try:
            up.wait(60)
        finally:
            up.kill()
    return up, port


def test_role_crash_during_startup_fails_up_with_its_log(state: Path) -> None:
    up, port = up_on_a_taken_port(
        state, str(HELLO), "--transport", "tcp", "--layout", "process-per-role"
    )
    err = up.log()
    assert up.returncode == 1
    assert "error: role frontend could not start: " in err
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


def test_a_taken_port_fails_the_auto_layout_before_any_role_starts(state: Path) -> None:
    """Front processes share their port (SO_REUSEPORT): dyn up must still refuse a port
    someone else holds, with one clear line."""
    if core_count() < 2:
        pytest.skip("one core: the auto layout runs the graph in one process")
    up, port = up_on_a_taken_port(state, str(KV_ROUTING), "--front-processes", "2")
    err = up.log()
    assert up.returncode == 1
    assert f"error: 'frontend' cannot listen on 127.0.0.1:{port}: Address already in use" in err
    assert "starting" not in err
    assert "Traceback" not in err
