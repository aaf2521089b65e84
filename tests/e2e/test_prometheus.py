"""A real Prometheus scrapes a multi-process `dyn up graphs/disagg.yaml --transport tcp`
through the run's ``targets.json``: every role is up, the disaggregation and worker
series are there per instance, each page passes ``promtool check metrics``, and a
replica added by `dyn scale` is scraped. A one-process run is one target.

Prometheus is Debian's ``prometheus`` package (`.ci/run` installs it), started here on
loopback with its own config and storage in the test's temporary folder.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from _dyn_graph import ROOT, DynUp, free_port, run_dyn, status_json
from _grafana import dashboard_names

from dyn.bench.scrape import parse_metrics

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

GRAPH = ROOT / "graphs" / "disagg.yaml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
ROLES = {"frontend", "processor", "worker", "prefill_queue", "prefill_worker"}
WAIT_S = 60.0  # every wait below is bounded by this

needs_prometheus = pytest.mark.skipif(
    not Path(PROMETHEUS).exists(),
    reason="the prometheus binary is not installed (Debian: apt-get install --no-install-"
    "recommends prometheus; .ci/run does)",
)

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = WAIT_S) -> T:
    """``probe()``'s first truthy answer, polled until ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"{what} within {timeout:.0f} s; last: {last!r}")


class Graph(DynUp):
    """The disagg graph, one process per role replica, over tcp."""

    def __init__(self, tmp: Path) -> None:
        args = [str(GRAPH), "--transport", "tcp", "--layout", "process-per-role"]
        super().__init__(*args, state=tmp / "state", log_path=tmp / "up.log")
        self.wait_healthy(timeout=90)

    @property
    def targets_path(self) -> Path:
        assert self.state is not None
        (run,) = (self.state / "runs").iterdir()
        return run / "targets.json"

    def targets(self) -> list[dict[str, Any]]:
        if not self.targets_path.exists():
            return []
        groups: list[dict[str, Any]] = json.loads(self.targets_path.read_text())
        return groups

    def instances(self, role: str) -> set[str]:
        """The instance ids of ``role``'s processes, as targets.json lists them."""
        return {g["labels"]["instance"] for g in self.targets() if g["labels"]["role"] == role}


class Prometheus:
    """``prometheus`` on a free loopback port, scraping the files ``targets`` every second."""

    def __init__(self, tmp: Path, targets: Path) -> None:
        config = tmp / "prometheus.yml"
        # The example in deploy/prometheus/, with a short interval for the test.
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: dyn\n    file_sd_configs:\n"
            f"      - files: ['{targets}']\n        refresh_interval: 1s\n"
        )
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = tmp / "prometheus.log"
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address={self.url.removeprefix('http://')}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for("prometheus ready", self._ready)

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        reply = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        assert reply.status_code == 200, reply.text
        result: list[dict[str, Any]] = reply.json()["data"]["result"]
        return result

    def labels(self, expr: str, label: str) -> set[str]:
        return {series["metric"].get(label, "") for series in self.query(expr)}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Graph]:
    up = Graph(tmp_path_factory.mktemp("graph"))
    try:
        yield up
    finally:
        up.stop(timeout=60)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, graph: Graph) -> Iterator[Prometheus]:
    if not Path(PROMETHEUS).exists():
        pytest.skip("the prometheus binary is not installed")
    wait_for("targets.json written", graph.targets)
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), graph.targets_path)
    try:
        yield server
    finally:
        server.stop()


RNG = random.Random(17)


def complete(graph: Graph, words: int) -> None:
    prompt = " ".join(f"w{RNG.randrange(500)}" for _ in range(words))
    body = {"model": "dyn-mock", "prompt": prompt, "max_tokens": 4, "ignore_eos": True}
    reply = httpx.post(f"{graph.url}/v1/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text


def test_targets_list_each_process_once_and_not_the_frontends_http_port(graph: Graph) -> None:
    groups = wait_for("every role process in targets.json", lambda: len(graph.targets()) == 7)
    assert groups
    status = status_json(graph)["instances"]
    # One target per role process, each its own page, labelled with its instance id.
    pages = {row["metrics_url"] for row in status}
    assert len(pages) == 7
    targets = [t for g in graph.targets() for t in g["targets"]]
    assert sorted(f"http://{t}/metrics" for t in targets) == sorted(pages)
    assert graph.url.removeprefix("http://") not in targets  # the same registry again
    by_instance = {row["instance_id"]: row for row in status}
    for group in graph.targets():
        labels = group["labels"]
        row = by_instance[labels["instance"]]
        assert (labels["role"], labels["node"]) == (row["component"], row["node"])
        # Each page answers /health for its process.
        health = httpx.get(f"http://{group['targets'][0]}/health", timeout=5)
        assert health.status_code == 200
        assert health.json() == {
            "role": labels["role"],
            "instance": labels["instance"],
            "state": "serving",
            "ok": True,
        }


@needs_prometheus
def test_prometheus_scrapes_every_role_and_their_series(
    graph: Graph, prometheus: Prometheus
) -> None:
    expected = {g["labels"]["instance"] for g in graph.targets()}
    assert len(expected) == 7

    def all_up() -> bool:
        series = prometheus.query('up{job="dyn"} == 1')
        return {s["metric"]["instance"] for s in series} == expected

    wait_for("up == 1 for every role", all_up)
    assert prometheus.labels('up{job="dyn"}', "role") == ROLES
    decode = graph.instances("worker")
    assert len(decode) == 2

    def prefills_on_every_decode_worker() -> bool:
        # Long prompts go remote, short ones stay local; concurrent ones spread.
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda words: complete(graph, words), [1500, 20, 1500, 20]))
        found = prometheus.labels('dyn_prefills_total{role="worker"}', "instance")
        return found == decode

    wait_for("dyn_prefills_total from every decode worker", prefills_on_every_decode_worker)
    assert prometheus.labels('dyn_prefills_total{location="remote"}', "instance") <= decode
    (queue,) = graph.instances("prefill_queue")
    assert prometheus.labels("dyn_prefill_queue_depth", "instance") == {queue}
    assert prometheus.labels("dyn_cached_prompt_tokens_total", "instance") == decode
    # Scraped once: the frontend's series come from its one target only.
    (front,) = graph.instances("frontend")
    wait_for(
        "the frontend's requests counted",
        lambda: prometheus.query("dyn_frontend_requests_total"),
    )
    assert prometheus.labels("dyn_frontend_requests_total", "instance") == {front}
    assert prometheus.labels("dyn_router_decisions_total", "role") == {"processor"}


def test_promtool_passes_every_roles_page(graph: Graph) -> None:
    if not Path(PROMTOOL).exists():
        pytest.skip("promtool is not installed (it comes with Debian's prometheus package)")
    pages = [f"http://{t}/metrics" for g in graph.targets() for t in g["targets"]]
    pages.append(f"{graph.url}/metrics")  # the frontend's HTTP port serves its process's too
    assert len(pages) == 8
    for page in pages:
        text = httpx.get(page, timeout=10).text
        assert "dyn_" in text
        check = subprocess.run(
            [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
        )
        assert check.returncode == 0, f"{page}:\n{check.stdout}{check.stderr}"


def page_names(text: str) -> set[str]:
    """The series names a page exposes, or declares (a labelled counter with no sample
    yet, such as the fallbacks by reason, shows only its HELP and TYPE lines)."""
    names = {name for name, _labels in parse_metrics(text)}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        names |= (
            {f"{name}_{s}" for s in ("bucket", "sum", "count")} if kind == "histogram" else {name}
        )
    return names


def test_every_name_the_grafana_dashboard_queries_is_on_the_graphs_pages(graph: Graph) -> None:
    exposed: set[str] = set()
    for group in graph.targets():
        exposed |= page_names(httpx.get(f"http://{group['targets'][0]}/metrics", timeout=10).text)
    queried = dashboard_names()
    assert len(queried) >= 10
    # `up` is the one series Prometheus makes itself, per target.
    assert queried - {"up"} <= exposed, sorted(queried - {"up"} - exposed)


@needs_prometheus
def test_a_replica_added_by_dyn_scale_is_scraped(graph: Graph, prometheus: Prometheus) -> None:
    before = graph.instances("worker")
    scaled = run_dyn(graph.state or ROOT, "scale", "worker", "3")
    assert scaled.returncode == 0, scaled.stderr
    added = wait_for("the new worker in targets.json", lambda: graph.instances("worker") - before)
    (new,) = added

    def scraped() -> bool:
        return bool(prometheus.query(f'up{{instance="{new}", role="worker"}} == 1'))

    wait_for("the new worker scraped", scraped)
    # Scaled back down: it leaves the targets.
    down = run_dyn(graph.state or ROOT, "scale", "worker", "2")
    assert down.returncode == 0, down.stderr
    wait_for(
        "the drained worker gone from targets.json", lambda: new not in graph.instances("worker")
    )


def test_one_process_is_one_target(tmp_path: Path) -> None:
    graph = ROOT / "graphs" / "kv_routing.yaml"
    up = DynUp(
        str(graph),
        "--layout",
        "one-process",
        state=tmp_path / "state",
        log_path=tmp_path / "up.log",
    )
    try:
        up.wait_healthy(timeout=60)
        (run,) = (tmp_path / "state" / "runs").iterdir()
        path = run / "targets.json"
        wait_for("targets.json written", path.exists)
        (group,) = json.loads(path.read_text())
        assert group["labels"]["role"] == "frontend+processor+worker"
        # Every role's metrics address is that one page (dyn status --json).
        rows = status_json(up)["instances"]
        assert len(rows) == 6
        assert {row["metrics_url"] for row in rows} == {f"http://{group['targets'][0]}/metrics"}
        health = httpx.get(f"http://{group['targets'][0]}/health", timeout=5).json()
        assert (health["role"], health["instance"], health["ok"]) == (
            "frontend+processor+worker",
            group["labels"]["instance"],
            True,
        )
        up.stop()
        assert json.loads(path.read_text()) == []  # a stopped run has nothing to scrape
    finally:
        up.kill()


@needs_prometheus
def test_the_issue_command_as_typed_is_scraped_whole(tmp_path: Path) -> None:
    """`dyn up graphs/disagg.yaml --transport tcp` with its default (auto) layout, where
    a front process hosts several roles: every role is up in Prometheus, under the
    process that hosts it, and each process is scraped once."""
    up = DynUp(
        str(GRAPH), "--transport", "tcp", state=tmp_path / "state", log_path=tmp_path / "up.log"
    )
    server: Prometheus | None = None
    try:
        up.wait_healthy(timeout=90)
        (run,) = (tmp_path / "state" / "runs").iterdir()
        path = run / "targets.json"
        groups = wait_for(
            "targets.json written", lambda: json.loads(path.read_text()) if path.exists() else []
        )
        (tmp_path / "prom").mkdir()
        server = Prometheus(tmp_path / "prom", path)
        expected = {g["labels"]["instance"] for g in groups}
        assert len(expected) == len(groups)  # one target per process

        def all_up() -> bool:
            return {s["metric"]["instance"] for s in server.query('up{job="dyn"} == 1')} == expected

        wait_for("up == 1 for every process", all_up)
        hosted = {
            role for label in server.labels('up{job="dyn"}', "role") for role in label.split("+")
        }
        assert hosted == ROLES
    finally:
        if server is not None:
            server.stop()
        up.stop(timeout=60)


def test_dyn_bench_scrape_measures_every_target(graph: Graph) -> None:
    """The scrape-cost command reads every process page of the run once per target."""
    result = run_dyn(graph.state or ROOT, "bench", "scrape", "--scrapes", "3", timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "http://" in line]
    assert len(rows) == len(graph.targets())
    for row in rows:
        cpu_ms = float(row.rstrip(" │").rsplit("│", 1)[-1])
        assert 0 <= cpu_ms < 1000  # a sanity bound only: figures come from the command
