"""The Grafana dashboard in deploy/grafana, as the tests read it: its panels, their
PromQL, and the series names that PromQL uses."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dyn-dashboard.json"
# A series name in PromQL: dyn's own, or `up`, which Prometheus makes for every target.
NAME = re.compile(r"\b(dyn_[a-z0-9_]+|up)\b")


def panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"]
    assert dashboard["uid"]
    found: list[dict[str, Any]] = [p for p in dashboard["panels"] if p["type"] != "row"]
    return found


def exprs(panel: dict[str, Any]) -> list[str]:
    return [target["expr"] for target in panel["targets"]]


def dashboard_names() -> set[str]:
    return {name for panel in panels() for expr in exprs(panel) for name in NAME.findall(expr)}
