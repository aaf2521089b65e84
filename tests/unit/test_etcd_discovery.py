"""The `etcd` discovery backend against a real etcd on loopback."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from _dyn_graph import DynUp, free_port
from _etcd_server import ETCD, running_etcd

from dyn import plugins
from dyn.discovery import etcd as etcd_module
from dyn.discovery.base import Instance
from dyn.discovery.etcd import EtcdDiscovery
from dyn.errors import DiscoveryError

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if ETCD is None:
        pytest.skip("the etcd binary is not installed (apt-get install etcd-server)")
    with running_etcd(tmp_path_factory.mktemp("etcd")) as url:
        yield url


def inst(instance_id: str = "a1", component: str = "backend") -> Instance:
    return Instance(
        namespace="ns",
        component=component,
        endpoint="generate",
        instance_id=instance_id,
        address="tcp://127.0.0.1:9000",
        transport="tcp",
    )


def ids(instances: list[Instance]) -> list[str]:
    return [i.instance_id for i in instances]


def unique_prefix(request: pytest.FixtureRequest) -> str:
    # Tests share one etcd: each gets its own key space.
    return f"/test/{request.node.name}/"


async def wait_for(disc: EtcdDiscovery, prefix: str, want: list[str], within: float) -> float:
    began = time.monotonic()
    with anyio.fail_after(within):
        while ids(await disc.snapshot(prefix)) != want:  # noqa: ASYNC110 (polls another process)
            await anyio.sleep(0.05)
    return time.monotonic() - began


def test_entry_point() -> None:
    assert plugins.load("dyn.discovery", "etcd") is EtcdDiscovery


def test_unknown_option_is_named() -> None:
    with pytest.raises(DiscoveryError, match=r"unknown etcd discovery option.*'endpoint'"):
        EtcdDiscovery(endpoint="x")


async def test_unreachable_etcd_names_the_endpoint() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(DiscoveryError, match=f"cannot reach etcd at {url}"):
        async with EtcdDiscovery(endpoints=url):
            pass


async def test_register_snapshot_watch_across_objects(
    etcd: str, request: pytest.FixtureRequest
) -> None:
    prefix = unique_prefix(request)
    async with (
        EtcdDiscovery(endpoints=etcd, prefix=prefix, ttl_s=5) as a,
        EtcdDiscovery(endpoints=[etcd], prefix=prefix, ttl_s=5) as b,
    ):
        seen: list[list[str]] = [["none yet"]]

        async def until_seen(want: list[str]) -> None:
            while seen[-1] != want:  # noqa: ASYNC110 (the watch task appends)
                await anyio.sleep(0.02)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:

                async def watch() -> None:
                    async with aclosing(b.watch("ns/backend/")) as snaps:
                        async for snap in snaps:
                            seen.append(ids(snap))

                tasks.start_soon(watch)
                await until_seen([])
                await a.register(inst("a1"))
                await until_seen(["a1"])
                await a.register(inst("a2"))
                await a.register(inst("other", component="middle"))
                await until_seen(["a1", "a2"])
                assert ids(await b.snapshot("ns/")) == ["a1", "a2", "other"]
                assert await b.snapshot("ns/backend/") == [inst("a1"), inst("a2")]
                await a.deregister(inst("a1"))
                await a.deregister(inst("never-registered"))
                await until_seen(["a2"])
                tasks.cancel_scope.cancel()
    # Leaving revoked the lease: nothing is left.
    async with EtcdDiscovery(endpoints=etcd, prefix=prefix) as c:
        assert await c.snapshot("") == []


async def test_dropped_registrar_vanishes_within_ttl(
    etcd: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = unique_prefix(request)
    ttl = 2.0
    async with EtcdDiscovery(endpoints=etcd, prefix=prefix, ttl_s=ttl) as reader:
        crashing = EtcdDiscovery(endpoints=etcd, prefix=prefix, ttl_s=ttl)
        # A crash: the keep-alive stops and nobody revokes the lease.
        monkeypatch.setattr(crashing, "_revoke", _no_revoke)
        async with crashing:
            await crashing.register(inst("gone"))
            await anyio.sleep(ttl)  # outlives one TTL: the keep-alive works
            assert ids(await reader.snapshot("ns/")) == ["gone"]
        took = await wait_for(reader, "ns/", [], within=ttl + 1)
        assert took <= ttl + 1


async def _no_revoke() -> None:
    return None


async def test_revoked_lease_registers_again(etcd: str, request: pytest.FixtureRequest) -> None:
    prefix = unique_prefix(request)
    async with EtcdDiscovery(endpoints=etcd, prefix=prefix, ttl_s=1.5) as a:
        await a.register(inst("a1"))
        old = a._lease
        async with httpx.AsyncClient() as http:
            await http.post(f"{etcd}/v3/lease/revoke", json={"ID": old})
        assert await a.snapshot("ns/") == []
        await wait_for(a, "ns/", ["a1"], within=3)
        assert a._lease != old


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def matching(self, text: str) -> list[str]:
        return [m for m in self.messages if text in m]


@pytest.fixture
def etcd_log() -> Iterator[_Records]:
    """The etcd module's records, caught at its own logger (a CLI test may have set the
    dyn logger not to propagate, and caplog's handler is replaced between test phases)."""
    logger = logging.getLogger("dyn.discovery.etcd")
    records, level = _Records(), logger.level
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)


async def _raw(etcd: str, path: str, body: dict[str, object]) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{etcd}/v3/{path}", json=body)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data


async def test_watch_rereads_after_compaction(
    etcd: str, request: pytest.FixtureRequest, etcd_log: _Records
) -> None:
    prefix = unique_prefix(request)
    async with EtcdDiscovery(endpoints=etcd, prefix=prefix, ttl_s=5) as a:
        await a.register(inst("a1"))
        watcher: AsyncIterator[list[Instance]] = a.watch("ns/")
        # The first snapshot comes from a range at revision R; the generator stays
        # suspended at its yield, so its stream is not opened before the next anext.
        assert ids(await anext(watcher)) == ["a1"]
        start = int((await _raw(etcd, "kv/range", {"key": "AA=="}))["header"]["revision"]) + 1
        # Two writes, then a compaction at R + 2: the watch from R + 1 is compacted away
        # (etcd keeps revision R + 2 itself, so one write would not do).
        await a.register(inst("a2"))
        await a.register(inst("a3"))
        now = int((await _raw(etcd, "kv/range", {"key": "AA=="}))["header"]["revision"])
        assert now == start + 1
        await _raw(etcd, "kv/compaction", {"revision": now})
        with anyio.fail_after(5):
            assert ids(await anext(watcher)) == ["a1", "a2", "a3"]
        assert etcd_log.matching(f"from revision {start} canceled (compacted at {now})")
        # After the re-read the watch follows events again.
        await a.deregister(inst("a1"))
        with anyio.fail_after(5):
            assert ids(await anext(watcher)) == ["a2", "a3"]
        assert ids(await a.snapshot("ns/")) == ["a2", "a3"]
        await watcher.aclose()  # type: ignore[attr-defined]  # an async generator


async def test_deleted_key_of_live_lease_is_put_back(
    etcd: str, request: pytest.FixtureRequest, etcd_log: _Records
) -> None:
    prefix = unique_prefix(request)
    ttl = 1.5  # a keep-alive every 0.5 s, a key check every 1.5 s
    async with EtcdDiscovery(endpoints=etcd, prefix=prefix, ttl_s=ttl) as a:
        await a.register(inst("a1"))
        await a.register(inst("a2"))
        lease = a._lease
        key = base64.b64encode(f"{prefix}{inst('a1').key}".encode()).decode()
        deleted = await _raw(etcd, "kv/deleterange", {"key": key})
        assert deleted["deleted"] == "1"
        assert ids(await a.snapshot("ns/")) == ["a2"]
        await wait_for(a, "ns/", ["a1", "a2"], within=3 * ttl)
        assert a._lease == lease  # put back on the same lease, not re-registered
        assert etcd_log.matching("were deleted; putting them back")
        held = await _raw(etcd, "lease/timetolive", {"ID": lease, "keys": True})
        assert len(held["keys"]) == 2


async def test_watch_skips_a_dead_endpoint_and_rereads_when_quiet(
    etcd: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    etcd_log: _Records,
) -> None:
    prefix = unique_prefix(request)
    monkeypatch.setattr(etcd_module, "WATCH_IDLE_S", 0.3)
    dead = f"http://127.0.0.1:{free_port()}"
    seen: list[list[str]] = [["none yet"]]

    async def until_seen(want: list[str]) -> None:
        while seen[-1] != want:  # noqa: ASYNC110 (the watch task appends)
            await anyio.sleep(0.02)

    async with (
        EtcdDiscovery(endpoints=etcd, prefix=prefix, ttl_s=5) as a,
        EtcdDiscovery(endpoints=[dead, etcd], prefix=prefix, ttl_s=5) as b,
    ):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:

                async def watch() -> None:
                    async with aclosing(b.watch("ns/")) as snaps:
                        async for snap in snaps:
                            seen.append(ids(snap))

                tasks.start_soon(watch)
                await until_seen([])
                # The stream fails at the dead endpoint, moves on, then goes quiet at etcd.
                while not etcd_log.matching(f"at {etcd} was quiet"):  # noqa: ASYNC110
                    await anyio.sleep(0.05)
                assert etcd_log.matching(f"at {dead} broke")
                await a.register(inst("a1"))
                await until_seen(["a1"])
                await a.deregister(inst("a1"))
                await until_seen([])
                tasks.cancel_scope.cancel()
    assert seen == [["none yet"], [], ["a1"], []]  # re-reads of an unchanged view yield nothing


def test_hello_world_over_etcd(etcd: str, tmp_path: Path) -> None:
    port = free_port()
    graph = tmp_path / "hello_etcd.yaml"
    text = (ROOT / "graphs" / "hello_world.yaml").read_text()
    text = text.replace(
        "discovery: memory ",
        f"discovery: {{backend: etcd, ttl_s: 2, options: {{endpoints: '{etcd}'}}}} ",
    )
    assert "backend: etcd" in text
    graph.write_text(text)
    up = DynUp(
        str(graph),
        "--transport",
        "tcp",
        port=port,
        state=tmp_path / "state",
        log_path=tmp_path / "up.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        up.wait_healthy(url, timeout=40)
        keys = _keys(etcd, "/dyn/hello/")
        assert {k.split("/")[3] for k in keys} == {"middle", "backend"}, keys
        with httpx.stream("POST", f"{url}/generate", content=b'{"text":"test"}') as resp:
            assert list(resp.iter_lines()) == ["Frontend: Middle: Backend: test-mid-back"]
        assert up.stop(timeout=60) == 0, up.log()
        assert _keys(etcd, "/dyn/") == []
    finally:
        up.kill()


def _keys(etcd: str, prefix: str) -> list[str]:
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    body = {
        "key": base64.b64encode(prefix.encode()).decode(),
        "range_end": base64.b64encode(end.encode()).decode(),
        "keys_only": True,
    }
    kvs = httpx.post(f"{etcd}/v3/kv/range", json=body, timeout=5).json().get("kvs", [])
    return [base64.b64decode(kv["key"]).decode() for kv in kvs]
