"""The run's Prometheus targets (``targets.json``): one target per process page, kept
current from discovery, written atomically; and a process page's ``/health``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry

from dyn.discovery.base import Instance
from dyn.discovery.memory import MemoryDiscovery
from dyn.launch.targets import ScrapePage, keep_targets, pages_of, scrape_targets, write_targets
from dyn.observability.metrics_server import METRICS_URL_KEY, ProcessHealth, serve_metrics

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


def _instance(
    component: str,
    instance_id: str,
    page: str | None,
    *,
    endpoint: str = "generate",
    replica: int = 0,
    node: str = "local",
) -> Instance:
    metadata: dict[str, Any] = {METRICS_URL_KEY: page} if page else {}
    return Instance(
        namespace="dyn",
        component=component,
        endpoint=endpoint,
        instance_id=instance_id,
        address="tcp://127.0.0.1:1",
        transport="tcp",
        node=node,
        replica=replica,
        metadata=metadata,
    )


def test_one_target_per_process_page_labelled_with_role_instance_and_node() -> None:
    front = "http://127.0.0.1:9001/metrics"
    instances = [
        # The auto layout's front process hosts a frontend and a processor: one page.
        _instance("processor", "p0", front),
        _instance("processor", "p0", front, endpoint="route_info"),
        _instance("frontend", "f0", front),
        _instance("worker", "w1", "http://127.0.0.2:9003/metrics", replica=1, node="b"),
        _instance("worker", "w0", "http://127.0.0.1:9002/metrics"),
        _instance("worker", "w0", "http://127.0.0.1:9002/metrics", endpoint="load"),
        _instance("worker", "wv6", "http://[::1]:9004/metrics", replica=2),
        _instance("joined", "j0", None),  # a program that serves no page: nothing to scrape
    ]
    assert scrape_targets(pages_of(instances)) == [
        {
            "targets": ["127.0.0.1:9001"],
            "labels": {
                "role": "frontend+processor",
                "instance": "f0",
                "node": "local",
                "__metrics_path__": "/metrics",
            },
        },
        {
            "targets": ["127.0.0.1:9002"],
            "labels": {
                "role": "worker",
                "instance": "w0",
                "node": "local",
                "__metrics_path__": "/metrics",
            },
        },
        {
            "targets": ["127.0.0.2:9003"],
            "labels": {
                "role": "worker",
                "instance": "w1",
                "node": "b",
                "__metrics_path__": "/metrics",
            },
        },
        {
            "targets": ["[::1]:9004"],
            "labels": {
                "role": "worker",
                "instance": "wv6",
                "node": "local",
                "__metrics_path__": "/metrics",
            },
        },
    ]


def test_targets_are_replaced_whole_and_readable(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    groups = scrape_targets(pages_of([_instance("worker", "w0", "http://127.0.0.1:9002/metrics")]))
    write_targets(path, groups)
    assert json.loads(path.read_text()) == groups
    write_targets(path, [])
    assert json.loads(path.read_text()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["targets.json"]  # no temp file left
    assert path.stat().st_mode & 0o444 == 0o444


async def test_targets_follow_discovery(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"

    async def targets(count: int) -> list[dict[str, Any]]:
        with anyio.fail_after(5):
            while True:
                if path.exists():
                    groups: list[dict[str, Any]] = json.loads(path.read_text())
                    if len(groups) == count:
                        return groups
                await anyio.sleep(0.01)

    discovery = MemoryDiscovery()
    w0 = _instance("worker", "w0", "http://127.0.0.1:9002/metrics")
    await discovery.register(w0)
    # The launcher's own pages: a frontend registers nothing in discovery.
    own = [ScrapePage("http://127.0.0.1:9001/metrics", "frontend", 0, "f0", "local")]
    async with anyio.create_task_group() as tasks:
        await tasks.start(keep_targets, discovery, "dyn", path, lambda: own)
        assert [g["labels"]["instance"] for g in await targets(2)] == ["f0", "w0"]
        # Scaled up: the new instance is a target.
        await discovery.register(_instance("worker", "w1", "http://127.0.0.1:9003/metrics"))
        assert [g["labels"]["instance"] for g in await targets(3)] == ["f0", "w0", "w1"]
        # Another namespace's instances are not this run's.
        await discovery.register(
            Instance(**{**_fields(w0), "namespace": "other", "instance_id": "x"})
        )
        await discovery.deregister(w0)  # drained, or its lease lapsed
        assert [g["labels"]["instance"] for g in await targets(2)] == ["f0", "w1"]
        # A process of the launcher's that died leaves without any discovery change.
        own.clear()
        assert [g["labels"]["instance"] for g in await targets(1)] == ["w1"]
        tasks.cancel_scope.cancel()


def _fields(instance: Instance) -> dict[str, Any]:
    return {name: getattr(instance, name) for name in instance.__struct_fields__}


async def test_health_is_503_until_the_process_serves_and_again_while_it_drains() -> None:
    health = ProcessHealth(["frontend", "processor"])
    async with anyio.create_task_group() as tasks:
        url = await serve_metrics(CollectorRegistry(), "127.0.0.1", tasks, health)
        health_url = url.removesuffix("/metrics") + "/health"
        async with httpx.AsyncClient(timeout=5) as client:
            starting = await client.get(health_url)
            assert starting.status_code == 503
            assert starting.json() == {
                "role": "frontend+processor",
                "instance": None,
                "state": "starting",
                "ok": False,
            }
            health.instance, health.state = "f0", "serving"
            serving = await client.get(health_url)
            assert serving.status_code == 200
            assert serving.headers["content-type"] == "application/json"
            assert serving.json() == {
                "role": "frontend+processor",
                "instance": "f0",
                "state": "serving",
                "ok": True,
            }
            health.state = "draining"
            draining = await client.get(health_url)
            assert draining.status_code == 503
            assert draining.json()["state"] == "draining"
            assert (await client.get(url)).status_code == 200  # metrics still answer
            # Liveness is not readiness: a draining process is alive, not to be restarted.
            live = await client.get(url.removesuffix("/metrics") + "/live")
            assert live.status_code == 200
            assert live.json()["state"] == "draining"
        tasks.cancel_scope.cancel()


class _Silent(MemoryDiscovery):
    """A discovery that never answers a watch (an etcd this machine cannot reach)."""

    async def watch(self, prefix: str) -> AsyncIterator[list[Instance]]:
        await anyio.sleep_forever()
        yield []


async def test_a_discovery_that_never_answers_does_not_hold_the_launch(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    own = [ScrapePage("http://127.0.0.1:9001/metrics", "frontend", 0, "f0", "local")]
    async with anyio.create_task_group() as tasks:
        with anyio.fail_after(10):
            await tasks.start(keep_targets, _Silent(), "dyn", path, lambda: own)
        assert [g["labels"]["instance"] for g in json.loads(path.read_text())] == ["f0"]
        tasks.cancel_scope.cancel()
