"""Starting `dyn up GRAPH` as a real process for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def dyn_up(
    graph: Path, port: int, log_path: Path, *sets: str, python: str = sys.executable
) -> Iterator[subprocess.Popen[str]]:
    """`dyn up GRAPH --port PORT --set ...` until healthy; SIGTERM and the log tail after.

    ``python`` is the interpreter whose dyn runs (another virtual environment's, say).
    """
    args = [python, "-m", "dyn", "up", str(graph), "--port", str(port)]
    for item in sets:
        args += ["--set", item]
    log = log_path.open("a")
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{graph.name} did not come up"
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        log.close()
        # Kept for a failing test's report: what the graph logged.
        print(f"--- {log_path.name}\n{log_path.read_text()[-3000:]}")
