"""The run's Prometheus targets: ``targets.json`` in the run folder, kept current.

Prometheus' file-based service discovery (``file_sd_configs``) reads a JSON list of
target groups, ``[{"targets": ["HOST:PORT"], "labels": {...}}]``, and reads it again
whenever the file changes. ``dyn up`` writes one group per process page (each role
process's own ``/metrics``, from the ``metrics_url`` in its discovery metadata) with the
labels ``role``, ``instance`` and ``node``, and rewrites the file from discovery whenever
the set of pages changes: `dyn scale`, a `dyn join` from another machine, a crash (once
its registration lapses).

One process is one target however many role instances it hosts, since they share one
registry: the auto layout's front process (frontend and processor) and the one-process
layout (every role) are each scraped once, so no series reaches Prometheus twice. Such
a target's ``role`` joins the components' names with ``+`` (``frontend+processor``) and
its ``instance`` is the id of the first of them by component name and replica, as its
``/health`` says. A frontend also serves its process's registry on its HTTP port; that
page is not a target, for the same reason.

A target label named ``instance`` is kept by Prometheus as the series' ``instance``
label (it only fills in ``HOST:PORT`` when no label of that name is set), so series are
labelled with dyn's instance ids, as `dyn status` shows them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio

from dyn.discovery.base import Discovery, Instance
from dyn.observability.metrics_server import METRICS_URL_KEY

__all__ = ["TARGETS_FILE", "keep_targets", "scrape_targets", "write_targets"]

# The file's name in the run folder.
TARGETS_FILE = "targets.json"

TargetGroup = dict[str, Any]


def scrape_targets(instances: list[Instance]) -> list[TargetGroup]:
    """One target group per distinct metrics page of ``instances``, sorted by role then
    address. Instances without a page (none published) are left out."""
    by_page: dict[str, dict[tuple[str, int, str], Instance]] = {}
    for instance in instances:
        url = instance.metadata.get(METRICS_URL_KEY)
        if not isinstance(url, str) or not url:
            continue
        # A role instance registers one key per endpoint: count it once.
        key = (instance.component, instance.replica, instance.instance_id)
        by_page.setdefault(url, {})[key] = instance
    groups = []
    for url, hosted in by_page.items():
        parts = urlsplit(url)
        if parts.hostname is None or parts.port is None:
            continue  # not an address Prometheus could scrape
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        first = hosted[min(hosted)]
        labels = {
            "role": "+".join(sorted({component for component, _, _ in hosted})),
            "instance": first.instance_id,
            "node": first.node,
            "__metrics_path__": parts.path or "/metrics",
        }
        groups.append({"targets": [f"{host}:{parts.port}"], "labels": labels})
    return sorted(groups, key=lambda g: (g["labels"]["role"], g["targets"][0]))


def write_targets(path: Path, groups: list[TargetGroup]) -> None:
    """Replace ``path`` atomically (a temp file renamed over it): Prometheus re-reads the
    file when it changes and must never read half of it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # Readable by others: a Prometheus running as another user may read it (the
        # run folder itself is the user's own; see docs/metrics.md).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(groups, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


async def keep_targets(
    discovery: Discovery,
    namespace: str,
    path: Path,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Write ``path`` from ``namespace``'s instances now, then again whenever the set of
    targets changes, until cancelled. Reports started once the first file is written."""
    written: list[TargetGroup] | None = None
    async for instances in discovery.watch(f"{namespace}/"):
        groups = scrape_targets(instances)
        if groups != written:
            write_targets(path, groups)
            if written is None:
                task_status.started()
            written = groups
