"""Discovery through a shared directory: several processes on one machine.

Each registration is one JSON file named after its key. A lease is the file's mtime: the
owner touches its files every TTL/3, and a file older than the TTL is dead, so a killed
process's entries vanish within the TTL while a clean exit removes them at once. Readers
poll the directory; there is no daemon to run.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

import anyio
import msgspec
from anyio.abc import TaskGroup

from dyn.discovery.base import Discovery, Instance
from dyn.errors import DiscoveryError
from dyn.settings import DISCOVERY_DIR_ENV

__all__ = ["DISCOVERY_DIR_ENV", "FileDiscovery"]


# Dynamo's file backend touches every max(TTL/3, 1 s); a smaller floor lets short test
# TTLs (1-2 s) keep a margin of three touches per TTL.
KEEPALIVE_FLOOR_S = 0.1
# Readers notice a change within this long even when the writer is another process.
MAX_POLL_S = 0.25

# A directory whose mtime is this recent is scanned in full whether or not it moved.
_RECENT_S = 1.0

_SUFFIX = ".json"
_TMP_SUFFIX = ".tmp"


class _Entry(msgspec.Struct, frozen=True, kw_only=True):
    """What one file holds: the instance plus who keeps it alive."""

    instance: Instance
    owner_pid: int
    lease: str


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Entry).decode


def _file_name(key: str) -> str:
    # Percent-encoding keeps the name one path segment whatever the key holds, and
    # never produces a leading '.', which temp files use.
    return quote(key, safe="") + _SUFFIX


class FileDiscovery(Discovery):
    """Registrations as files in ``path``. A launch always gives it (the run's folder
    unless the graph names one); without it, the folder the environment variable
    :data:`~dyn.settings.DISCOVERY_DIR_ENV` names, for programs and `dyn join`."""

    def __init__(
        self,
        *,
        ttl_s: float = 10.0,
        path: str | os.PathLike[str] | None = None,
        poll_s: float | None = None,
        **options: object,
    ) -> None:
        if options:
            raise DiscoveryError(
                f"unknown file discovery option(s) {', '.join(map(repr, sorted(options)))}; "
                "available: path, poll_s"
            )
        if path is None:
            path = os.environ.get(DISCOVERY_DIR_ENV) or None
        if path is None:
            raise DiscoveryError(
                "file discovery needs a directory: set discovery.options.path in the graph "
                f"or the {DISCOVERY_DIR_ENV} environment variable"
            )
        if ttl_s <= 0 or (poll_s is not None and float(poll_s) <= 0):
            raise DiscoveryError(
                f"file discovery needs ttl_s and poll_s > 0, got ttl_s={ttl_s} poll_s={poll_s}"
            )
        self.path = Path(path).expanduser()
        self.ttl_s = float(ttl_s)
        self.poll_s = float(poll_s) if poll_s is not None else min(MAX_POLL_S, ttl_s / 4)
        self.keepalive_s = max(ttl_s / 3, KEEPALIVE_FLOOR_S)
        self.lease = secrets.token_hex(8)
        # Writes run in worker threads; the lock keeps a keep-alive re-write from
        # resurrecting a file that deregister has just removed.
        self._lock = threading.Lock()
        self._mine: dict[str, Instance] = {}
        self._scanner = _Scanner(self.path, self.ttl_s)
        self._changed = anyio.Event()
        self._tasks: TaskGroup | None = None

    # -- lease -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await anyio.to_thread.run_sync(self._make_dir)
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        self._tasks.start_soon(self._keep_alive)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tasks, self._tasks = self._tasks, None
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._remove_all)
        self._signal()
        if tasks is not None:
            tasks.cancel_scope.cancel()
            await tasks.__aexit__(exc_type, exc, tb)

    async def _keep_alive(self) -> None:
        while True:
            await anyio.sleep(self.keepalive_s)
            await anyio.to_thread.run_sync(self._touch_all)

    def _make_dir(self) -> None:
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise DiscoveryError(f"cannot create discovery directory {self.path}: {exc}") from exc

    def _touch_all(self) -> None:
        with self._lock:
            for key, instance in self._mine.items():
                try:
                    os.utime(self.path / _file_name(key))
                except FileNotFoundError:
                    # A reader judged it expired (we were stalled past the TTL) or
                    # someone deleted it: we are alive, so it comes back.
                    self._write(instance)
                except OSError:
                    pass  # the next round retries; a real failure shows in register

    def _remove_all(self) -> None:
        with self._lock:
            for key in list(self._mine):
                self._unlink(key)
            self._mine.clear()

    # -- writing -----------------------------------------------------------------------

    async def register(self, instance: Instance) -> None:
        if self._tasks is None:
            raise RuntimeError("register needs the lease: use 'async with FileDiscovery(...)'")
        await anyio.to_thread.run_sync(self._register, instance)
        self._signal()

    def _register(self, instance: Instance) -> None:
        with self._lock:
            try:
                self._write(instance)
            except OSError as exc:
                raise DiscoveryError(
                    f"cannot register {instance.key} in {self.path}: {exc}"
                ) from exc
            self._mine[instance.key] = instance

    async def deregister(self, instance: Instance) -> None:
        await anyio.to_thread.run_sync(self._deregister, instance.key)
        self._signal()

    def _deregister(self, key: str) -> None:
        with self._lock:
            if self._mine.pop(key, None) is not None:
                self._unlink(key)

    def _write(self, instance: Instance) -> None:
        name = _file_name(instance.key)
        data = _encode(_Entry(instance=instance, owner_pid=os.getpid(), lease=self.lease))
        tmp = self.path / f".{name}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            # Readers see the old file or the new one, never half of either.
            os.replace(tmp, self.path / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _unlink(self, key: str) -> None:
        # The lease lapses anyway once we stop touching it.
        with contextlib.suppress(OSError):
            (self.path / _file_name(key)).unlink(missing_ok=True)

    def _signal(self) -> None:
        # Wakes this object's own watchers at once; other processes poll.
        self._changed.set()
        self._changed = anyio.Event()

    # -- reading -----------------------------------------------------------------------

    async def snapshot(self, prefix: str) -> list[Instance]:
        live = await anyio.to_thread.run_sync(self._scanner.scan)
        return [live[k] for k in sorted(live) if k.startswith(prefix)]

    async def watch(self, prefix: str) -> AsyncIterator[list[Instance]]:
        last: list[Instance] | None = None
        while True:
            changed = self._changed
            current = await self.snapshot(prefix)
            if current != last:
                last = current
                yield current
            with anyio.move_on_after(self.poll_s):
                await changed.wait()


class _Scanner:
    """Reads the directory, parsing only files that changed since the last scan.

    Keep-alive touches change every file's mtime, so parsed entries are cached by
    (inode, size) instead: a re-write goes through a new temp file, whose inode differs
    from the one it replaces, and the mtime is used only to judge liveness. (A file
    deleted and re-created within one poll at the same size could reuse the inode and be
    missed; keys carry random instance ids, so only a same-process re-register could.)
    """

    def __init__(self, path: Path, ttl_s: float) -> None:
        self.path = path
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[int, int, Instance | None]] = {}
        # The last full scan: its result, the directory's (inode, mtime), and when the
        # oldest lease it saw runs out.
        self._live: dict[str, Instance] = {}
        self._stamp: tuple[int, int] | None = None
        self._next_expiry = -math.inf

    def scan(self) -> dict[str, Instance]:
        with self._lock:
            now = time.time()
            try:
                st = os.stat(self.path)
                stamp: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
            except OSError:
                stamp = None
            # An unchanged directory holds the same files: the last result stands until
            # the oldest lease it saw could run out (touching a file leaves the directory
            # as it is; the full scan then reads the touched mtimes).
            # A directory changed in the last second is scanned anyway: its mtime comes
            # from a coarse clock, and a second change in the same tick would not move it.
            if (
                stamp is None
                or stamp != self._stamp
                or now - st.st_mtime < _RECENT_S
                or now >= self._next_expiry
            ):
                self._live = self._scan()
                self._stamp = stamp
            return dict(self._live)

    def _scan(self) -> dict[str, Instance]:
        now = time.time()
        live: dict[str, Instance] = {}
        seen: set[str] = set()
        oldest = math.inf
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            entries = []  # nobody has registered yet
        except OSError as exc:
            raise DiscoveryError(f"cannot read discovery directory {self.path}: {exc}") from exc
        for entry in entries:
            name = entry.name
            is_tmp = name.endswith(_TMP_SUFFIX)
            if not (is_tmp or name.endswith(_SUFFIX)):
                continue
            try:
                st = entry.stat()
            except OSError:
                continue  # removed under us
            if now - st.st_mtime > self.ttl_s:
                self._expire(Path(entry.path), now)
                continue
            oldest = min(oldest, st.st_mtime)
            if is_tmp:
                continue  # a write in progress
            seen.add(name)
            cached = self._cache.get(name)
            if cached is not None and cached[:2] == (st.st_ino, st.st_size):
                instance = cached[2]
            else:
                instance = _read(Path(entry.path))
                self._cache[name] = (st.st_ino, st.st_size, instance)
            if instance is not None:
                live[instance.key] = instance
        for name in self._cache.keys() - seen:
            del self._cache[name]
        self._next_expiry = oldest + self.ttl_s
        return live

    def _expire(self, path: Path, now: float) -> None:
        # Look again just before deleting: the owner may have touched it meanwhile.
        # The window that remains is harmless, as an owner that is alive re-writes it.
        try:
            if now - path.stat().st_mtime > self.ttl_s:
                path.unlink()
        except OSError:
            pass  # another reader won the race, or we may not delete: either way, ignore


def _read(path: Path) -> Instance | None:
    """The instance a file holds, or None if it is not one of ours (or was cut short)."""
    try:
        return _decode(path.read_bytes()).instance
    except (OSError, msgspec.DecodeError):
        return None
