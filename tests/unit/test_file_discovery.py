"""The `file` discovery backend: leases by mtime, across objects and real processes."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import anyio
import pytest

from dyn import plugins
from dyn.discovery.base import Instance
from dyn.discovery.file import FileDiscovery
from dyn.errors import DiscoveryError

pytestmark = pytest.mark.anyio

CHILD = Path(__file__).with_name("_file_discovery_child.py")


def inst(component: str = "backend", instance_id: str = "a1", **kw: object) -> Instance:
    return Instance(
        namespace="ns",
        component=component,
        endpoint="generate",
        instance_id=instance_id,
        address=f"127.0.0.1:{kw.pop('port', 9000)}",
        transport="tcp",
        **kw,  # type: ignore[arg-type]
    )


def files(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())


def ids(instances: list[Instance]) -> list[str]:
    return [i.instance_id for i in instances]


async def test_entry_point_and_env_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_DISCOVERY_DIR", str(tmp_path))
    cls = plugins.load("dyn.discovery", "file")
    assert cls is FileDiscovery
    assert FileDiscovery().path == tmp_path


def test_missing_dir_config_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DYN_DISCOVERY_DIR", raising=False)
    with pytest.raises(DiscoveryError, match=r"set discovery.options.path .* DYN_DISCOVERY_DIR"):
        FileDiscovery()


def test_unknown_option_is_named(tmp_path: Path) -> None:
    with pytest.raises(DiscoveryError, match=r"unknown file discovery option.*'pth'.*path, poll_s"):
        FileDiscovery(path=str(tmp_path), pth="x")


async def test_register_snapshot_deregister_across_objects(tmp_path: Path) -> None:
    with anyio.fail_after(5):
        reader = FileDiscovery(path=str(tmp_path), ttl_s=2)
        async with FileDiscovery(path=str(tmp_path), ttl_s=2) as writer:
            b, a = inst(instance_id="b"), inst(instance_id="a")
            other = inst(component="frontend", instance_id="f")
            for i in (b, a, other):
                await writer.register(i)
            assert await reader.snapshot("ns/backend/") == [a, b]  # sorted by key
            assert await reader.snapshot("") == [a, b, other]
            await writer.deregister(b)
            assert await reader.snapshot("ns/backend/") == [a]
            await writer.deregister(b)  # unknown: not an error
            # one file per registration, named so that it stays one path segment
            names = [p.name for p in files(tmp_path)]
            assert names == [
                "ns%2Fbackend%2Fgenerate%2Fa.json",
                "ns%2Ffrontend%2Fgenerate%2Ff.json",
            ]


async def test_register_replaces_the_same_key(tmp_path: Path) -> None:
    with anyio.fail_after(5):
        reader = FileDiscovery(path=str(tmp_path), ttl_s=2)
        async with FileDiscovery(path=str(tmp_path), ttl_s=2) as writer:
            await writer.register(inst(port=9000))
            assert [i.address for i in await reader.snapshot("ns/")] == ["127.0.0.1:9000"]
            # same size, so only the inode tells the reader's cache it changed
            await writer.register(inst(port=9001))
            assert [i.address for i in await reader.snapshot("ns/")] == ["127.0.0.1:9001"]


async def test_register_needs_the_lease(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await FileDiscovery(path=str(tmp_path)).register(inst())


async def test_watch_sees_another_objects_changes(tmp_path: Path) -> None:
    seen: list[list[str]] = []
    with anyio.fail_after(10):
        reader = FileDiscovery(path=str(tmp_path), ttl_s=2)
        async with FileDiscovery(path=str(tmp_path), ttl_s=2) as writer:
            await writer.register(inst(instance_id="a"))
            watcher = reader.watch("ns/backend/")
            seen.append(ids(await anext(watcher)))
            await writer.register(inst(instance_id="b"))
            await writer.register(inst(component="other", instance_id="x"))  # other prefix
            # the two writes may land in one poll or two
            while (current := ids(await anext(watcher))) != ["a", "b"]:
                seen.append(current)
            seen.append(current)
            await writer.deregister(inst(instance_id="a"))
            seen.append(ids(await anext(watcher)))
        seen.append(ids(await anext(watcher)))  # leaving removed the rest at once
        await watcher.aclose()  # type: ignore[attr-defined]
    assert seen == [["a"], ["a", "b"], ["b"], []]


async def test_keepalive_holds_entry_past_ttl(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        reader = FileDiscovery(path=str(tmp_path), ttl_s=1)
        async with FileDiscovery(path=str(tmp_path), ttl_s=1) as writer:
            await writer.register(inst())
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:  # keep reading: readers are what expire
                assert ids(await reader.snapshot("ns/")) == ["a1"]
                await anyio.sleep(0.1)


async def test_keepalive_rewrites_a_vanished_file(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        async with FileDiscovery(path=str(tmp_path), ttl_s=0.6) as writer:
            await writer.register(inst())
            (path,) = files(tmp_path)
            path.unlink()
            await anyio.sleep(writer.keepalive_s * 2)
            assert path.exists()
            assert ids(await writer.snapshot("ns/")) == ["a1"]


async def test_clean_exit_removes_entries_at_once(tmp_path: Path) -> None:
    with anyio.fail_after(5):
        reader = FileDiscovery(path=str(tmp_path), ttl_s=10)
        async with FileDiscovery(path=str(tmp_path), ttl_s=10) as writer:
            await writer.register(inst(instance_id="a"))
            await writer.register(inst(instance_id="b"))
            assert len(await reader.snapshot("ns/")) == 2
        assert await reader.snapshot("ns/") == []
        assert files(tmp_path) == []


async def test_stale_files_are_ignored_and_deleted(tmp_path: Path) -> None:
    with anyio.fail_after(5):
        async with FileDiscovery(path=str(tmp_path), ttl_s=1) as writer:
            await writer.register(inst(instance_id="old"))
            (stale,) = files(tmp_path)
            content = stale.read_bytes()
        # what a killed owner leaves behind: its file, no longer touched
        stale.write_bytes(content)
        leftover_tmp = tmp_path / ".x.json.abcd.tmp"  # a writer killed mid-write
        leftover_tmp.write_bytes(b"{")
        an_hour_ago = time.time() - 3600
        for p in (stale, leftover_tmp):
            os.utime(p, (an_hour_ago, an_hour_ago))
        async with FileDiscovery(path=str(tmp_path), ttl_s=1) as writer:
            await writer.register(inst(instance_id="new"))
            assert ids(await FileDiscovery(path=str(tmp_path), ttl_s=1).snapshot("")) == ["new"]
        assert not stale.exists()
        assert not leftover_tmp.exists()


async def test_corrupt_files_are_skipped(tmp_path: Path) -> None:
    with anyio.fail_after(5):
        (tmp_path / "garbage.json").write_bytes(b"\x00not json")
        (tmp_path / "half.json").write_bytes(b'{"instance": {"namespace": "ns"')
        (tmp_path / "wrong-shape.json").write_bytes(b'{"instance": 3, "owner_pid": 1}')
        (tmp_path / "notes.txt").write_text("not ours")
        (tmp_path / "subdir.json").mkdir()
        reader = FileDiscovery(path=str(tmp_path), ttl_s=10)
        async with FileDiscovery(path=str(tmp_path), ttl_s=10) as writer:
            await writer.register(inst())
            watcher = reader.watch("ns/")
            assert ids(await anext(watcher)) == ["a1"]
            await writer.deregister(inst())
            assert ids(await anext(watcher)) == []
            await watcher.aclose()  # type: ignore[attr-defined]


async def test_missing_directory_reads_as_empty_and_is_created_on_enter(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b"
    with anyio.fail_after(5):
        assert await FileDiscovery(path=str(path)).snapshot("") == []
        async with FileDiscovery(path=str(path)) as writer:
            await writer.register(inst())
        assert path.is_dir()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
async def test_killed_process_entry_expires(tmp_path: Path) -> None:
    ttl_s = 1.0
    reader = FileDiscovery(path=str(tmp_path), ttl_s=ttl_s)
    with anyio.fail_after(30):
        async with await anyio.open_process(
            [sys.executable, str(CHILD), str(tmp_path), str(ttl_s), "child1"]
        ) as proc:
            assert proc.stdout is not None
            out = b""
            while b"ready" not in out:
                out += await proc.stdout.receive()
            watcher = reader.watch("ns/child/")
            assert ids(await anext(watcher)) == ["child1"]
            # Let a keep-alive round or two pass, so the kill lands at a random lease age.
            await anyio.sleep(ttl_s * 0.8)
            proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            await proc.wait()
            assert ids(await anext(watcher)) == []
            took = time.monotonic() - killed_at
            await watcher.aclose()  # type: ignore[attr-defined]
    print(f"killed child's entry gone after {took:.2f} s (ttl {ttl_s} s)")
    assert took <= ttl_s + 1.0
    assert files(tmp_path) == []  # the reader deleted the dead file


async def test_a_lapsed_lease_is_seen_while_the_directory_stands_still(tmp_path: Path) -> None:
    # A reader may keep its last scan while the directory is unchanged; a lease running
    # out changes no directory entry, and must still end the instance within the TTL.
    with anyio.fail_after(5):
        reader = FileDiscovery(path=str(tmp_path), ttl_s=1)  # the writer touches every 20 s
        async with FileDiscovery(path=str(tmp_path), ttl_s=60) as writer:
            await writer.register(inst(instance_id="a"))
            settled = time.time() - 30
            os.utime(tmp_path, (settled, settled))  # not changed in the last second
            assert ids(await reader.snapshot("ns/")) == ["a"]
            await anyio.sleep(1.2)
            os.utime(tmp_path, (settled, settled))  # the directory looks exactly as before
            assert ids(await reader.snapshot("ns/")) == []
