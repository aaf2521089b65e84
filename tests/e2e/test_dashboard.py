"""The dashboard of graphs/kv_routing.yaml run by `dyn up`, under load, in a real browser.

One graph for the module: two front processes behind one port (each answers the page's
polls in turn), the frontend bound beyond loopback so that `dyn up` makes an admin token
and prints the dashboard's address with it. Every connection goes to 127.0.0.1.

The browser is Debian's headless Chromium driven by selenium through Debian's
chromedriver, both named by path: nothing is downloaded. Without them the browser test
skips (CI installs them, .ci/run). Its screenshot goes to the test's temporary folder,
or to ``$DYN_DASHBOARD_SCREENSHOT`` (``docs/img/dashboard.png`` refreshes the README's).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _dyn_graph import DynUp
from _prompts import WORDS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
GRAPH = ROOT / "graphs" / "kv_routing.yaml"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
LOAD_LIMIT_S = 30.0  # the load never runs longer than this, whatever the tests do
CHARTS = ("chart-rps", "chart-ttft", "chart-itl", "chart-hit", "chart-disagg")


class Load:
    """A few client threads sending completions (shared prefixes, so the kv router has
    overlaps to weigh) until stopped or for at most LOAD_LIMIT_S."""

    def __init__(self, url: str, clients: int = 3) -> None:
        self.url = url
        self.stop = threading.Event()
        self.sent = 0
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]
        for thread in self.threads:
            thread.start()

    def _run(self, seed: int) -> None:
        deadline = time.monotonic() + LOAD_LIMIT_S
        # Four shared prefixes of 48 words (a few KV blocks each), then a varying word.
        prefixes = [" ".join(WORDS[(p * 7 + k) % len(WORDS)] for k in range(48)) for p in range(4)]
        with httpx.Client(base_url=self.url, timeout=30) as http:
            i = seed
            while not self.stop.is_set() and time.monotonic() < deadline:
                prompt = f"{prefixes[i % len(prefixes)]} {WORDS[i % len(WORDS)]}"
                body = {"model": "dyn-mock", "prompt": prompt, "max_tokens": 8}
                http.post("/v1/completions", json=body).raise_for_status()
                self.sent += 1
                i += 3

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(LOAD_LIMIT_S + 30)


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DynUp, str, Load]]:
    folder = tmp_path_factory.mktemp("dashboard")
    up = DynUp(
        str(GRAPH),
        "--front-processes",
        "2",
        "--set",
        "worker.speedup_ratio=20",
        "--set",
        "frontend.host=0.0.0.0",  # beyond loopback: dyn up makes an admin token
        log_path=folder / "up.log",
        state=folder / "state",
    )
    try:
        up.wait_healthy()
        deadline = time.monotonic() + 30
        while not (found := re.search(r"^Dashboard: (\S+)", up.stdout(), re.MULTILINE)):
            assert time.monotonic() < deadline, f"no Dashboard line in:\n{up.stdout()}"
            time.sleep(0.1)
        address = re.sub(r"^http://[^/]+", up.url, found.group(1))  # dialled on 127.0.0.1
        load = Load(up.url)
        try:
            yield up, address, load
        finally:
            load.close()
    finally:
        up.stop()


def token_of(address: str) -> str:
    match = re.search(r"\?token=(\S+)$", address)
    assert match, f"the printed dashboard address carries no token: {address}"
    return match.group(1)


def workers_of(up: DynUp, token: str) -> set[str]:
    headers = {"authorization": f"Bearer {token}"}
    status = httpx.get(f"{up.url}/admin/status", headers=headers, timeout=10).json()
    return {row["instance_id"] for row in status["instances"] if row["component"] == "worker"}


def test_decisions_and_data_answer_under_load_and_need_the_token(
    graph: tuple[DynUp, str, Load],
) -> None:
    up, address, load = graph
    token = token_of(address)
    for path in ("/dashboard", "/admin/route/decisions", "/admin/dashboard/data"):
        assert httpx.get(f"{up.url}{path}", timeout=10).status_code == 401, path
    headers = {"authorization": f"Bearer {token}"}
    workers = workers_of(up, token)
    assert len(workers) == 4
    deadline = time.monotonic() + 20
    while load.sent < 20:
        assert time.monotonic() < deadline, "the load did not get going"
        time.sleep(0.2)
    reply = httpx.get(f"{up.url}/admin/route/decisions", headers=headers, timeout=10)
    decisions = reply.json()["decisions"]
    assert decisions, reply.text
    for decision in decisions:
        assert decision["worker"] in workers
        assert decision["strategy"] == "kv"
        assert {score["worker"] for score in decision["scores"]} == workers
    # Every process's page is read: the workers' series come from their own processes.
    data = httpx.get(f"{up.url}/admin/dashboard/data", headers=headers, timeout=10).json()
    assert {row["worker"] for row in data["workers"]} == workers
    assert data["pages"]["missing"] == []
    assert data["requests_total"] > 0


def chrome() -> Any:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            "needs Debian's chromium and chromium-driver at /usr/bin "
            "(apt-get install chromium chromium-driver; .ci/run installs them)"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the test extra)")
    from selenium.webdriver.chrome.service import Service

    # Both paths are given, so Selenium Manager has nothing to find; offline, it could
    # not download a browser or a driver even if it tried.
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1250",
        "--no-proxy-server",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def test_the_dashboard_charts_the_graph_in_a_browser(
    graph: tuple[DynUp, str, Load], tmp_path: Path
) -> None:
    up, address, _load = graph
    driver = chrome()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    try:
        driver.get(address)  # the token once; the page keeps it in a cookie
        assert driver.current_url == f"{up.url}/dashboard", "the token stays in the address"
        deadline = time.monotonic() + 40
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = driver.execute_script(
                """
                const charts = {};
                for (const id of arguments[0]) {
                  const e = document.getElementById(id);
                  charts[id] = {points: Number(e.dataset.points), last: e.dataset.last,
                                shown: !e.hidden};
                }
                return {
                  charts,
                  workers: [...document.querySelectorAll('#workers tr[data-worker]')]
                    .map(r => r.dataset.worker),
                  decisions: [...document.querySelectorAll('#decisions .decision')]
                    .map(d => d.dataset.worker),
                  status: document.getElementById('status').textContent,
                };
                """,
                list(CHARTS),
            )
            # kv_routing has no disaggregation: its queue and prefills chart stays hidden;
            # every other chart must draw (points with figures, not empty polls).
            charts = {k: c for k, c in state["charts"].items() if k != "chart-disagg"}
            rps = charts["chart-rps"]["last"]
            filled = all(c["points"] >= 5 and c["shown"] for c in charts.values())
            if filled and rps and float(rps) > 0:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the charts did not fill with load: {state}")
        assert not state["charts"]["chart-disagg"]["shown"], "an aggregated graph has no queue"
        workers = workers_of(up, token_of(address))
        assert set(state["workers"]) == workers, state
        assert state["decisions"], state
        assert set(state["decisions"]) <= workers, state
        wanted = os.environ.get("DYN_DASHBOARD_SCREENSHOT")
        if wanted:  # the README's picture: a little more history on the charts
            with contextlib.suppress(Exception):
                WebDriverWait(driver, 15).until(
                    lambda d: (
                        int(d.find_element(By.ID, "chart-rps").get_attribute("data-points")) >= 15
                    )
                )
        screenshot = Path(wanted or tmp_path / "dash.png")
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size > 10_000
    finally:
        driver.quit()
