"""`dyn bench` as a real process against `dyn up graphs/kv_routing.yaml` (a real process
too): progress lines when stderr is no terminal, Ctrl-C's partial results, each worker's
share when the router runs in a process of its own, and the error with no server.

The workers decode at a fixed 20 ms a token, so a request of 40 output tokens takes
about 0.8 s and a run lasts long enough to be watched and interrupted.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _dyn_graph import DynProcess, DynUp, dyn_up, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
GRAPH = ROOT / "graphs" / "kv_routing.yaml"
SLOW = "worker.timing={fixed: {prefill_ms: 0, decode_ms: 20}}"


def workload(groups: int, per_group: int) -> list[str]:
    return [
        "--groups", str(groups), "--prompts-per-group", str(per_group),
        "--system-prompt-len", "32", "--question-len", "8", "--output-len", "40",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def slow_graph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DynUp]:
    log = tmp_path_factory.mktemp("bench_progress") / "up.log"
    with dyn_up(GRAPH, free_port(), log, SLOW) as up:
        yield up


def bench(tmp_path: Path, *args: str) -> DynProcess:
    # Its own empty state directory: the graph is reached by --url alone.
    return DynProcess("bench", *args, log_path=tmp_path / "bench.log", state=tmp_path / "state")


def wait_for_line(process: DynProcess, pattern: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, process.log(), re.MULTILINE):
            return
        assert process.returncode is None, f"dyn bench ended early:\n{process.log()}"
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"no line matching {pattern!r} in:\n{process.log()}")


def test_progress_lines_when_stderr_is_no_terminal(slow_graph: DynUp, tmp_path: Path) -> None:
    run = bench(tmp_path, "--url", slow_graph.url, *workload(2, 4), "--max-concurrency", "1")
    assert run.wait(60) == 0, run.log()
    lines = run.log().splitlines()
    assert "" not in lines
    assert "kv: 8 requests" in lines
    # At least one line in between, every 5 s, with the figures a watcher needs.
    between = r"kv: [1-7]/8 requests, \d+\.\d req/s, 0 errors, 0:\d\d elapsed, ETA \d+:\d\d"
    assert any(re.fullmatch(between, line) for line in lines), lines
    assert any(line.startswith("kv: 8/8 requests, ") for line in lines), lines
    assert "Successful requests:                     8" in run.stdout()


def test_ctrl_c_prints_the_partial_results(slow_graph: DynUp, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    run = bench(
        tmp_path, "--url", slow_graph.url, *workload(2, 20), "--max-concurrency", "2",
        "--save-result", str(out),
    )  # fmt: skip
    wait_for_line(run, r"^kv: [1-9]\d*/40 requests", timeout=30)  # the 5 s line
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(30) == 130, run.log()
    match = re.search(
        r"^stopped by Ctrl-C \(SIGINT\) after (\d+) of 40 requests\. Partial results:$",
        run.stdout(),
        re.MULTILINE,
    )
    assert match, run.stdout()
    done = int(match.group(1))
    assert 0 < done < 40
    assert "Serving Benchmark Result (partial)" in run.stdout()
    result = json.loads(out.read_text())
    assert result["stopped"] == {"requests_done": done, "requests_planned": 40}
    assert result["completed"] == done
    assert len(result["ttfts"]) == done
    assert "Traceback" not in run.log()


def test_ctrl_c_during_compare_names_the_arm(slow_graph: DynUp, tmp_path: Path) -> None:
    run = bench(
        tmp_path, "--url", slow_graph.url, *workload(2, 20), "--max-concurrency", "2",
        "--compare", "round_robin,kv",
    )  # fmt: skip
    wait_for_line(run, r"^arm 1/2 round_robin: [1-9]\d*/40 requests", timeout=30)
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(30) == 130, run.log()
    assert re.search(
        r"^stopped by Ctrl-C \(SIGINT\) during arm 1/2 round_robin: round_robin stopped "
        r"after \d+ of 40 requests; not run: kv\. Partial results:$",
        run.stdout(),
        re.MULTILINE,
    ), run.stdout()
    # The graph's own strategy is back.
    assert httpx.get(f"{slow_graph.url}/admin/route").json()["strategy"] == "kv"


def test_no_server_is_one_error_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    run = bench(tmp_path, "--url", url)
    assert run.wait(30) == 1
    assert run.stdout() == ""
    (line,) = run.log().splitlines()
    assert line.startswith(f"error: cannot reach {url}/v1/models ("), line
    assert "`dyn up graphs/kv_routing.yaml`" in line
    nothing = bench(tmp_path / "no_url")  # no --url and no run here
    assert nothing.wait(30) == 1
    (line,) = nothing.log().splitlines()
    assert line.startswith("error: no graph is running here"), line
    assert "`dyn up graphs/kv_routing.yaml`" in line


def test_compare_worker_share_over_tcp_processes(tmp_path: Path) -> None:
    # One process per role: the router's decisions are counted in the processor's
    # process, whose /metrics page is not the frontend's.
    fast = "worker.timing={fixed: {prefill_ms: 0, decode_ms: 0}}"
    options = ["--layout", "process-per-role"]
    with dyn_up(GRAPH, free_port(), tmp_path / "up.log", fast, options=options) as up:
        out = tmp_path / "r.json"
        run = bench(
            tmp_path, "--url", up.url, *workload(4, 4), "--compare", "round_robin,kv",
            "--save-result", str(out),
        )  # fmt: skip
        assert run.wait(60) == 0, run.log()
    arms = json.loads(out.read_text())
    # round_robin spreads the 16 requests evenly; kv may leave a worker idle.
    assert list(arms["round_robin"]["worker_request_share"].values()) == [0.25] * 4
    assert sum(arms["kv"]["worker_request_share"].values()) == pytest.approx(1.0)
    busiest = re.search(r"^Busiest worker share\s+(\d+)%\s+(\d+)%$", run.stdout(), re.MULTILINE)
    assert busiest, run.stdout()
    assert all(int(v) >= 25 for v in busiest.groups()), run.stdout()
