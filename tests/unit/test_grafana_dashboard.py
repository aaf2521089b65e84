"""The Grafana dashboard in deploy/grafana: it loads, every panel queries Prometheus,
there is a panel for each thing the dashboard shows, and its PromQL parses (promtool).
That every name it queries is on a running graph's pages is checked in
tests/e2e/test_prometheus.py."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from _grafana import NAME, dashboard_names, exprs, panels

# What the dashboard must show, each as names one panel's queries must all use.
ITEMS = {
    "requests/s": {"dyn_frontend_requests_total"},
    "TTFT percentiles": {"dyn_frontend_time_to_first_token_seconds_bucket"},
    "ITL percentiles": {"dyn_frontend_inter_token_latency_seconds_bucket"},
    "per-worker load": {"dyn_worker_inflight_requests"},
    "KV usage": {"dyn_worker_kv_active_blocks", "dyn_worker_kv_total_blocks"},
    "prefix hit rate": {"dyn_cached_prompt_tokens_total", "dyn_prompt_tokens_total"},
    "queue depth": {"dyn_prefill_queue_depth"},
    "remote/local prefills": {"dyn_prefills_total"},
    "routing decisions": {"dyn_router_decisions_total"},
}


def test_the_dashboard_loads_and_every_panel_queries_prometheus() -> None:
    found = panels()
    assert len(found) >= len(ITEMS)
    for panel in found:
        assert panel["title"]
        assert panel["description"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert exprs(panel), panel["title"]
    # Panels do not overlap on the grid.
    cells: set[tuple[int, int]] = set()
    for panel in found:
        pos = panel["gridPos"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & area, panel["title"]
        cells |= area
    assert len({name for name in dashboard_names() if name.startswith("dyn_")}) >= 10


@pytest.mark.parametrize("item", sorted(ITEMS))
def test_a_panel_shows_each_item(item: str) -> None:
    needed = ITEMS[item]
    assert any(needed <= set(NAME.findall(" ".join(exprs(p)))) for p in panels()), item


def test_by_worker_panels_group_by_worker() -> None:
    for item in ("per-worker load", "KV usage", "routing decisions"):
        (panel,) = [p for p in panels() if ITEMS[item] <= set(NAME.findall(" ".join(exprs(p))))]
        assert all("by (worker)" in expr for expr in exprs(panel)), item
    (prefills,) = [p for p in panels() if "dyn_prefills_total" in " ".join(exprs(p))]
    assert "by (location)" in exprs(prefills)[0]


@pytest.mark.timeout(60)
def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(
            "promtool is not installed (Debian's prometheus package has it; .ci/run installs it)"
        )
    # Grafana fills in $__rate_interval; promtool checks the rest as a recording rule.
    rules = [
        {"record": f"dyn:panel_{i}", "expr": expr.replace("$__rate_interval", "1m")}
        for i, expr in enumerate(e for panel in panels() for e in exprs(panel))
    ]
    path = tmp_path / "rules.json"  # JSON is YAML
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{len(rules)} rules found" in check.stdout
