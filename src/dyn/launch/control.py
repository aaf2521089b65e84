"""The control channel of a running `dyn up`: how `dyn scale` reaches it.

`dyn up` listens on a loopback TCP port it records, with a random token, in the run
record (which only the user can read). A request is one JSON line with the token and an
operation; the answer is one JSON line ``{"ok": true, "lines": [...]}`` or
``{"ok": false, "error": "..."}``. Only ``scale`` exists: ``{"op": "scale",
"component": NAME, "replicas": N}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import SocketStream, TaskGroup

from dyn.errors import DynError, LaunchError

__all__ = ["ControlServer", "send_control"]

log = logging.getLogger(__name__)

# Scaling up waits for new roles to be ready; that bounds how long a request may take.
REQUEST_TIMEOUT_S = 120.0
MAX_REQUEST_BYTES = 64 * 1024

ScaleHandler = Callable[[str, int], Awaitable[list[str]]]


class ControlServer:
    """Serves control requests on 127.0.0.1 until its task group is cancelled."""

    def __init__(self, scale: ScaleHandler) -> None:
        self.scale = scale
        self.token = secrets.token_urlsafe(24)
        self.port = 0
        # One change at a time: two `dyn scale` calls must not interleave.
        self._lock = anyio.Lock()

    async def start(self, tasks: TaskGroup) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        tasks.start_soon(listener.serve, self._handle)

    async def _handle(self, stream: SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(5):
                    raw = await _read_line(stream)
                answer = await self._answer(json.loads(raw))
            except (ValueError, TimeoutError, anyio.EndOfStream) as exc:
                answer = {"ok": False, "error": f"bad control request: {exc}"}
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await stream.send(json.dumps(answer).encode() + b"\n")

    async def _answer(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict) or not secrets.compare_digest(
            str(request.get("token", "")), self.token
        ):
            return {"ok": False, "error": "wrong or missing control token"}
        if request.get("op") != "scale":
            return {"ok": False, "error": f"unknown operation {request.get('op')!r}"}
        component, replicas = request.get("component"), request.get("replicas")
        if not isinstance(component, str) or not isinstance(replicas, int):
            return {"ok": False, "error": "scale needs a component name and a replica count"}
        async with self._lock:
            try:
                lines = await self.scale(component, replicas)
            except DynError as exc:
                return {"ok": False, "error": str(exc)}
        return {"ok": True, "lines": lines}


async def _read_line(stream: SocketStream) -> bytes:
    data = b""
    while b"\n" not in data:
        data += await stream.receive()
        if len(data) > MAX_REQUEST_BYTES:
            raise ValueError("request too large")
    return data.split(b"\n", 1)[0]


def send_control(port: int, token: str, request: dict[str, Any]) -> list[str]:
    """Send one request to a running `dyn up` (blocking); its lines, or LaunchError."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT_S) as sock:
            sock.sendall(json.dumps({**request, "token": token}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise LaunchError(
            f"cannot reach the run's dyn up on 127.0.0.1:{port}: {exc}; is it still running?"
        ) from exc
    try:
        answer = json.loads(data)
    except ValueError as exc:
        raise LaunchError(f"dyn up answered something unexpected: {data[:200]!r}") from exc
    if not answer.get("ok"):
        raise LaunchError(str(answer.get("error", "dyn up refused the request")))
    return [str(line) for line in answer.get("lines", [])]
