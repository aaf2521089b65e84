"""Free ports, and `dyn` commands (above all `dyn up GRAPH`) run as real processes.

Every test that starts a graph goes through here: ``DynUp`` (or the ``dyn_up`` context
manager) starts `dyn up` on a free loopback port with its stdout and stderr in files,
waits until its frontend answers ``/health``, stops it with SIGINT (SIGKILL if it does
not exit in time) and keeps its output for the test's assertions and its report.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NoReturn

import httpx

from dyn.net import free_port

__all__ = ["DYN", "ROOT", "DynProcess", "DynUp", "dyn_up", "free_port", "run_dyn", "status_json"]

ROOT = Path(__file__).resolve().parents[1]


# How a test runs the CLI: the interpreter running the tests, so the same installation.
def port_is_listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port`` now."""
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


DYN = (sys.executable, "-m", "dyn")
LOG_TAIL = 4000  # characters of a process's log that a failure report shows


class DynProcess:
    """``dyn ARGS`` as a subprocess; stderr goes to ``log_path``, stdout beside it.

    Files rather than pipes, so a chatty process never blocks on a full pipe and its
    output can be read while it runs. ``command`` replaces ``python -m dyn`` (for a
    wrapper such as ``ip netns exec NS dyn``).
    """

    def __init__(
        self,
        *args: str,
        log_path: Path,
        state: Path | None = None,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = DYN,
    ) -> None:
        self.state = state
        self.log_path = log_path
        self.stdout_path = log_path.with_suffix(".stdout")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        if state is not None:
            state.mkdir(parents=True, exist_ok=True)
            self.env["DYN_STATE_DIR"] = str(state)
        self._files: list[IO[str]] = [self.stdout_path.open("w"), log_path.open("w")]
        self.proc = subprocess.Popen(
            [*command, *args],
            stdout=self._files[0],
            stderr=self._files[1],
            text=True,
            cwd=ROOT,
            env=self.env,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def log(self) -> str:
        """What the process wrote to stderr so far (for `dyn up`: every role's log)."""
        return self.log_path.read_text()

    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def wait_healthy(self, url: str, timeout: float) -> None:
        """Until ``url/health`` answers 200. Fails with the log, the process killed, if it
        exits first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._fail(f"dyn exited early with code {self.proc.returncode}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self._fail(f"dyn did not become healthy at {url} within {timeout} s")

    def wait_serving(self, timeout: float) -> str:
        """The URL of `dyn up`'s "Serving on URL" line, once it has printed one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(r"^Serving on (\S+)", self.stdout(), re.MULTILINE)
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self._fail("dyn up did not serve")

    def _fail(self, why: str) -> NoReturn:
        self.kill()
        raise AssertionError(f"{why}; its log:\n{self.log()[-LOG_TAIL:]}")

    def wait(self, timeout: float) -> int:
        """The exit code once the process ends by itself (TimeoutExpired past ``timeout``)."""
        code = self.proc.wait(timeout)
        self._close()
        return code

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout: float = 60) -> int:
        """Send ``sig`` and wait for the exit code. A process still running ``timeout``
        seconds later is killed, and the test fails: dyn must exit on SIGINT/SIGTERM."""
        hung = False
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                hung = True
                self.proc.kill()
                self.proc.wait()
        self._close()
        # Shown only in a failing test's report: what the process logged last.
        print(f"--- {self.log_path.name}\n{self.log()[-LOG_TAIL:]}")
        assert not hung, f"dyn did not exit within {timeout} s of {sig.name}; killed it"
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close()

    def _close(self) -> None:
        for file in self._files:
            file.close()

    def __enter__(self) -> DynProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class DynUp(DynProcess):
    """``dyn up ARGS --port PORT``, the frontend on ``port`` (a free one by default)."""

    def __init__(
        self,
        *args: str,
        log_path: Path,
        port: int | None = None,
        state: Path | None = None,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = DYN,
    ) -> None:
        self.port = free_port() if port is None else port
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            "up",
            *args,
            "--port",
            str(self.port),
            log_path=log_path,
            state=state,
            env=env,
            command=command,
        )

    def wait_healthy(self, url: str | None = None, timeout: float = 60) -> None:
        super().wait_healthy(self.url if url is None else url, timeout)

    def record(self) -> dict[str, Any]:
        """The run record (``run.json``), once the launcher has named the frontend in it."""
        assert self.state is not None, "the run record needs DynUp(state=...)"
        (run,) = (self.state / "runs").iterdir()
        deadline = time.monotonic() + 30
        # The launcher rewrites the record once every role is up; it then names the frontend.
        while time.monotonic() < deadline:
            record: dict[str, Any] = json.loads((run / "run.json").read_text())
            if record["frontend_url"]:
                return record
            time.sleep(0.05)
        self._fail("the run record never named the frontend")

    def role_pids(self) -> dict[str, int]:
        """Role name (``worker[1]``) → pid, from the run record."""
        return {r["role"]: r["pid"] for r in self.record()["roles"]}

    def __enter__(self) -> DynUp:
        return self


@contextmanager
def dyn_up(
    graph: Path,
    port: int,
    log_path: Path,
    *sets: str,
    state: Path | None = None,
    timeout: float = 30,
    python: str = sys.executable,
    options: Sequence[str] = (),
) -> Iterator[DynUp]:
    """`dyn up GRAPH --port PORT --set ... OPTIONS`, healthy within ``timeout``; stopped
    after.

    ``python`` is the interpreter whose dyn runs (another virtual environment's, say).
    """
    args = [str(graph), *options]
    for item in sets:
        args += ["--set", item]
    up = DynUp(*args, log_path=log_path, port=port, state=state, command=(python, "-m", "dyn"))
    try:
        up.wait_healthy(timeout=timeout)
        yield up
    finally:
        up.stop(timeout=30)


def run_dyn(state: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """`dyn ARGS` to its end, on the state directory ``state``, its output captured (a
    wide terminal, so tables keep every column)."""
    return subprocess.run(
        [*DYN, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "DYN_STATE_DIR": str(state), "COLUMNS": "200"},
        cwd=ROOT,
    )


def status_json(up: DynProcess) -> dict[str, Any]:
    """`dyn status --json` of the run ``up`` started (its environment names the state)."""
    out = subprocess.run(
        [*DYN, "status", "--json"], env=up.env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def metrics_pages(base_url: str) -> list[str]:
    """The text of every ``/metrics`` page of the dyn run behind ``base_url``: in a
    multi-process layout each process serves its own (found through /admin/status), so a
    counter of the whole graph is the sum over these pages. A page that does not answer
    (its process was killed) is left out."""
    import anyio
    import httpx

    from dyn.bench.run_metrics import metrics_urls

    async def urls() -> list[str]:
        async with httpx.AsyncClient(timeout=10) as client:
            return await metrics_urls(client, base_url)

    pages = []
    for url in anyio.run(urls):
        try:
            pages.append(httpx.get(url, timeout=10).text)
        except httpx.TransportError:
            continue  # a process that is gone (a killed role): nothing to count there
    return pages


@contextmanager
def serve_in_thread(app: Any, log_level: str = "warning") -> Iterator[str]:
    """Serve an ASGI ``app`` (a test's stand-in upstream) with uvicorn in a daemon thread
    on a free loopback port; yields its base URL and stops it after."""
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level=log_level))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
