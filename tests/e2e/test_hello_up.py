"""`dyn up graphs/hello_world.yaml` as a real process: serve, then exit cleanly on SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from _dyn_graph import DYN, ROOT, DynUp, free_port, port_is_listening

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_dyn_up_serves_hello_world_and_exits_cleanly(sig: signal.Signals, tmp_path: Path) -> None:
    up = DynUp("graphs/hello_world.yaml", log_path=tmp_path / "up.log")
    port, url = up.port, up.url
    try:
        up.wait_healthy(timeout=20)
        with httpx.stream("POST", f"{url}/generate", content=b'{"text":"test"}') as resp:
            lines = list(resp.iter_lines())
        assert lines == ["Frontend: Middle: Backend: test-mid-back"]
        up.stop(sig, timeout=20)
    finally:
        up.kill()
    out, err = up.stdout(), up.log()
    assert up.returncode == 0, err
    assert f"Serving on {url}" in out
    assert f"curl -N {url}/generate" in out
    assert "frontend up" in err
    assert "backend stopped" in err
    assert not port_is_listening(port), "the port is still listening"


def test_an_output_reader_that_left_ends_dyn_up_quietly(tmp_path: Path) -> None:
    """`dyn up ... | head -1`: once the reader has gone, dyn up stops its roles and exits
    as a pipeline's earlier command does (141), without a traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before dyn up writes anything
    try:
        up = subprocess.Popen(
            [*DYN, "up", "graphs/hello_world.yaml", "--port", str(free_port())],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "DYN_STATE_DIR": str(tmp_path / "state")},
        )
    finally:
        os.close(write_end)
    try:
        _, err = up.communicate(timeout=60)
    finally:
        up.kill()
    assert up.returncode == 141, err
    assert "Traceback" not in err, err
    assert "■ frontend stopped" in err
