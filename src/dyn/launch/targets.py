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

Pages come from discovery (each role process publishes its ``metrics_url`` with its
entries) and from the launcher, which knows the pages of the processes it started: a
frontend registers no endpoint, so discovery alone would miss it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import anyio

from dyn.discovery.base import Discovery, Instance
from dyn.observability.metrics_server import METRICS_URL_KEY

__all__ = ["TARGETS_FILE", "ScrapePage", "keep_targets", "scrape_targets", "write_targets"]

# The file's name in the run folder.
TARGETS_FILE = "targets.json"
# How often the launcher's own list of pages is read again between discovery changes
# (a role process that died): a comparison of two short lists, no I/O unless it changed.
OWN_REFRESH_S = 1.0

# How long the first file waits for discovery's first answer before it lists the
# launcher's own pages alone (discovery's are added once it answers).
FIRST_ANSWER_S = 2.0

TargetGroup = dict[str, Any]


class ScrapePage(NamedTuple):
    """One role instance and the page its process serves."""

    url: str
    component: str
    replica: int
    instance_id: str
    node: str


def pages_of(instances: list[Instance]) -> list[ScrapePage]:
    """The pages discovery's entries publish (those without one are left out)."""
    pages = []
    for instance in instances:
        url = instance.metadata.get(METRICS_URL_KEY)
        if isinstance(url, str) and url:
            pages.append(
                ScrapePage(
                    url, instance.component, instance.replica, instance.instance_id, instance.node
                )
            )
    return pages


def scrape_targets(pages: list[ScrapePage]) -> list[TargetGroup]:
    """One target group per distinct page, sorted by role then address."""
    by_url: dict[str, dict[tuple[str, int, str], ScrapePage]] = {}
    for page in pages:
        # A role instance registers one key per endpoint: count it once.
        by_url.setdefault(page.url, {})[(page.component, page.replica, page.instance_id)] = page
    groups = []
    for url, hosted in by_url.items():
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
    own: Callable[[], list[ScrapePage]] = list,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Write ``path`` from ``namespace``'s instances and the launcher's ``own`` pages
    (role processes it started that register nothing, such as a frontend) now, then
    again whenever the set of targets changes, until cancelled. Reports started once
    the first file is written."""
    latest: list[Instance] = []
    changed = anyio.Event()

    async def follow() -> None:
        nonlocal changed
        async for instances in discovery.watch(f"{namespace}/"):
            latest[:] = instances
            changed.set()

    written: list[TargetGroup] | None = None
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(follow)
        with anyio.move_on_after(FIRST_ANSWER_S):  # an unreachable etcd never answers
            await changed.wait()
        while True:
            changed = anyio.Event()
            groups = scrape_targets([*pages_of(latest), *own()])
            if groups != written:
                write_targets(path, groups)
                if written is None:
                    task_status.started()
                written = groups
            with anyio.move_on_after(OWN_REFRESH_S):
                await changed.wait()
