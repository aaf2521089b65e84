"""Discovery through etcd's v3 HTTP/JSON gateway: several machines, one registry.

Every registration is one key, ``prefix + instance.key``, holding the instance as JSON
and attached to this object's lease. The lease is kept alive every TTL/3; when it is
gone (etcd restarted, or someone revoked it) a new one is granted and everything is
registered again. Once a TTL the keep-alive also asks etcd which keys the lease holds
(one ``lease/timetolive`` call) and puts back any registration whose key someone
deleted while the lease lived. A clean exit revokes the lease, which removes every key
at once; a crashed process's keys vanish when its lease lapses.

A watch reads the registry with one range, then follows the watch stream from the
revision after it. Whenever the stream ends it re-ranges and watches again: when etcd
cancels it because that revision was compacted, when it breaks (then it moves on to the
next endpoint), and when it has been quiet for ``WATCH_IDLE_S``. The last is the safety
net against a half-open connection, which would otherwise freeze the view silently. It
is used instead of etcd's progress notifications because etcd 3.4 sends those only every
10 minutes; a re-range of one prefix a minute is cheap, and yields nothing if unchanged.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import AsyncGenerator
from contextlib import aclosing
from types import TracebackType
from typing import Any, Self

import anyio
import httpx
import msgspec
from anyio.abc import TaskGroup

from dyn.discovery.base import Discovery, Instance
from dyn.errors import DiscoveryError

__all__ = ["EtcdDiscovery"]

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://127.0.0.1:2379"
# How long one unary call to etcd may take before the endpoint counts as unreachable.
REQUEST_TIMEOUT_S = 5.0
# Pause before re-watching after a broken stream, so a down etcd is not hammered.
REWATCH_DELAY_S = 0.5
# A watch stream silent this long is dropped and the registry re-read: quiet is normal,
# but so is silence on a half-open connection. (etcd 3.4's progress notifications come
# only every 10 minutes, too rarely to tell the two apart.)
WATCH_IDLE_S = 60.0
# Every this many keep-alive rounds (so once a TTL), check that the lease still holds
# every registered key and put back any deleted by hand (`dyn down`, an operator).
KEY_CHECK_ROUNDS = 3

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Instance).decode


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode(errors="replace")


def _range_end(key: str) -> str:
    """The smallest key above every key that starts with ``key`` (etcd's prefix rule)."""
    raw = bytearray(key.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return base64.b64encode(bytes(raw)).decode()
        raw.pop()
    return _b64("\0")  # every key


class _Refused(DiscoveryError):
    """etcd answered with an error status (e.g. 404 for an unknown lease)."""


class EtcdDiscovery(Discovery):
    """Registrations in etcd at ``endpoints`` (a URL, a comma-separated list, or a list)."""

    def __init__(
        self,
        *,
        ttl_s: float = 10.0,
        endpoints: str | list[str] = DEFAULT_ENDPOINT,
        prefix: str = "/dyn/",
        start: bool = False,  # for `dyn up`: start etcd at the first endpoint
        **options: object,
    ) -> None:
        if options:
            raise DiscoveryError(
                f"unknown etcd discovery option(s) {', '.join(map(repr, sorted(options)))}; "
                "available: endpoints, prefix, start"
            )
        if ttl_s <= 0:
            raise DiscoveryError(f"etcd discovery needs ttl_s > 0, got {ttl_s}")
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        self.endpoints = [e.strip().rstrip("/") for e in endpoints if e.strip()]
        if not self.endpoints:
            raise DiscoveryError(
                "etcd discovery needs at least one endpoint, e.g. " + DEFAULT_ENDPOINT
            )
        self.prefix = prefix
        self.ttl_s = float(ttl_s)
        self.keepalive_s = self.ttl_s / 3
        self._lease: str | None = None
        self._mine: dict[str, Instance] = {}
        # Held while the lease is replaced, so a register cannot use a dead lease.
        self._lock = anyio.Lock()
        self._http: httpx.AsyncClient | None = None
        self._tasks: TaskGroup | None = None

    # -- talking to etcd ---------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S)
        return self._http

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the first endpoint that answers; an HTTP error status raises too."""
        failures = []
        for endpoint in self.endpoints:
            url = f"{endpoint}/v3/{path}"
            try:
                response = await self._client().post(url, json=body)
            except httpx.HTTPError as exc:
                failures.append(f"{endpoint} ({exc.__class__.__name__}: {exc})")
                continue
            if response.status_code >= 400:
                raise _Refused(
                    f"etcd at {endpoint} refused {path}: {response.status_code} {response.text}"
                )
            # Keep-alive answers as a stream: its first line is the whole answer.
            data: dict[str, Any] = json.loads(response.text.splitlines()[0] or "{}")
            return data
        raise DiscoveryError(
            f"cannot reach etcd at {'; '.join(failures)}; is etcd running? "
            "(set discovery.options.endpoints in the graph)"
        )

    async def _grant(self) -> str:
        data = await self._post("lease/grant", {"TTL": max(1, math.ceil(self.ttl_s))})
        lease: str = data["ID"]
        return lease

    async def _put(self, instance: Instance, lease: str) -> None:
        value = base64.b64encode(_encode(instance)).decode()
        key = _b64(self.prefix + instance.key)
        await self._post("kv/put", {"key": key, "value": value, "lease": lease})

    # -- lease -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._lease = await self._grant()
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
        if tasks is not None:
            tasks.cancel_scope.cancel()
            await tasks.__aexit__(exc_type, exc, tb)
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(REQUEST_TIMEOUT_S):
                await self._revoke()
            self._mine.clear()
            if self._http is not None:
                await self._http.aclose()
                self._http = None

    async def _revoke(self) -> None:
        lease, self._lease = self._lease, None
        if lease is None:
            return
        try:
            await self._post("lease/revoke", {"ID": lease})
        except DiscoveryError as exc:
            log.warning("could not revoke the etcd lease (it lapses anyway): %s", exc)

    async def _keep_alive(self) -> None:
        rounds = 0
        while True:
            await anyio.sleep(self.keepalive_s)
            rounds += 1
            try:
                await self._refresh(check_keys=rounds % KEY_CHECK_ROUNDS == 0)
            except DiscoveryError as exc:
                # The next round retries; if the lease lapsed meanwhile it is replaced.
                log.warning("etcd keep-alive failed: %s", exc)

    async def _refresh(self, *, check_keys: bool = False) -> None:
        async with self._lock:
            lease = self._lease
            alive = False
            if lease is not None:
                try:
                    data = await self._post("lease/keepalive", {"ID": lease})
                    alive = "TTL" in data.get("result", {})
                except _Refused:
                    pass  # an unknown lease: etcd lost it, so grant another
            if alive:
                if check_keys and self._mine:
                    assert lease is not None
                    await self._restore_deleted(lease)
                return
            log.warning(
                "etcd lease %s is gone; registering %d instance(s) again", lease, len(self._mine)
            )
            self._lease = lease = await self._grant()
            for instance in list(self._mine.values()):
                await self._put(instance, lease)

    async def _restore_deleted(self, lease: str) -> None:
        """Put back registrations whose key is no longer on ``lease`` (deleted by hand)."""
        data = await self._post("lease/timetolive", {"ID": lease, "keys": True})
        if int(data.get("TTL", -1)) < 0:
            return  # the lease itself is gone: the next round grants another
        held = {_unb64(key) for key in data.get("keys", [])}
        missing = [i for key, i in self._mine.items() if self.prefix + key not in held]
        if not missing:
            return
        log.warning(
            "etcd key(s) of live registration(s) were deleted; putting them back: %s",
            ", ".join(self.prefix + i.key for i in missing),
        )
        for instance in missing:
            await self._put(instance, lease)

    # -- writing -----------------------------------------------------------------------

    async def register(self, instance: Instance) -> None:
        if self._tasks is None:
            raise RuntimeError("register needs the lease: use 'async with EtcdDiscovery(...)'")
        async with self._lock:
            assert self._lease is not None
            await self._put(instance, self._lease)
            self._mine[instance.key] = instance

    async def deregister(self, instance: Instance) -> None:
        async with self._lock:
            if self._mine.pop(instance.key, None) is None:
                return
            await self._post("kv/deleterange", {"key": _b64(self.prefix + instance.key)})

    async def remove_instances(self, namespace: str, instance_ids: set[str]) -> int:
        """Delete every key of ``namespace`` that belongs to one of ``instance_ids``, and
        nothing else (`dyn down` after a crash: other runs may share the namespace).

        Needs no lease: use it without ``async with``; it closes its connections itself.
        """
        key = f"{self.prefix}{namespace}/"
        try:
            body = {"key": _b64(key), "range_end": _range_end(key), "keys_only": True}
            data = await self._post("kv/range", body)
            names = [_unb64(kv["key"]) for kv in data.get("kvs", [])]
            ours = [name for name in names if name.rsplit("/", 1)[-1] in instance_ids]
            for name in ours:
                await self._post("kv/deleterange", {"key": _b64(name)})
            return len(ours)
        finally:
            if self._tasks is None and self._http is not None:
                await self._http.aclose()
                self._http = None

    # -- reading -----------------------------------------------------------------------

    async def _range(self, prefix: str) -> tuple[dict[str, Instance], int]:
        key = self.prefix + prefix
        data = await self._post("kv/range", {"key": _b64(key), "range_end": _range_end(key)})
        live: dict[str, Instance] = {}
        for kv in data.get("kvs", []):
            instance = _parse(kv)
            if instance is not None:
                live[_unb64(kv["key"])] = instance
        return live, int(data.get("header", {}).get("revision", 0))

    async def snapshot(self, prefix: str) -> list[Instance]:
        live, _ = await self._range(prefix)
        return [live[k] for k in sorted(live)]

    async def watch(self, prefix: str) -> AsyncGenerator[list[Instance], None]:
        key = self.prefix + prefix
        request = {"key": _b64(key), "range_end": _range_end(key)}
        last: list[Instance] | None = None
        turn = 0  # which endpoint the stream uses; moves on when a stream fails
        while True:
            try:
                live, revision = await self._range(prefix)
            except DiscoveryError as exc:
                log.warning("etcd watch of %r: %s", key, exc)
                await anyio.sleep(REWATCH_DELAY_S)
                continue
            current = [live[k] for k in sorted(live)]
            if current != last:
                last = current
                yield current
            endpoint = self.endpoints[turn % len(self.endpoints)]
            body = {"create_request": {**request, "start_revision": str(revision + 1)}}
            try:
                async with aclosing(self._stream(endpoint, body, live)) as updates:
                    async for current in updates:
                        if current != last:
                            last = current
                            yield current
            except httpx.ReadTimeout:
                # Quiet for WATCH_IDLE_S, or a half-open connection: re-read to be sure.
                log.debug("etcd watch of %r at %s was quiet; reading again", key, endpoint)
                turn += 1
                continue
            except (httpx.HTTPError, ValueError) as exc:
                log.info("etcd watch of %r at %s broke (%s); watching again", key, endpoint, exc)
                turn += 1
            await anyio.sleep(REWATCH_DELAY_S)

    async def _stream(
        self, endpoint: str, body: dict[str, Any], live: dict[str, Instance]
    ) -> AsyncGenerator[list[Instance], None]:
        """Apply watch events to ``live`` until etcd ends or cancels the watch."""
        url = f"{endpoint}/v3/watch"
        timeout = httpx.Timeout(REQUEST_TIMEOUT_S, read=WATCH_IDLE_S)
        async with self._client().stream("POST", url, json=body, timeout=timeout) as response:
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                result = json.loads(line).get("result", {})
                if result.get("canceled") or "compact_revision" in result:
                    # etcd keeps the stream open after cancelling: leave, and re-range.
                    log.info(
                        "etcd watch from revision %s canceled (compacted at %s); reading again",
                        body["create_request"]["start_revision"],
                        result.get("compact_revision", "-"),
                    )
                    return
                for event in result.get("events", []):
                    kv = event["kv"]
                    name = _unb64(kv["key"])
                    instance = None if event.get("type") == "DELETE" else _parse(kv)
                    if instance is None:
                        live.pop(name, None)
                    else:
                        live[name] = instance
                if result.get("events"):
                    yield [live[k] for k in sorted(live)]


def _parse(kv: dict[str, Any]) -> Instance | None:
    """The instance a key holds, or None if it is not one of ours."""
    try:
        return _decode(base64.b64decode(kv.get("value", "")))
    except (ValueError, msgspec.DecodeError):
        return None
