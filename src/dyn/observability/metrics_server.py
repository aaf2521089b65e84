"""A role process's own ``/metrics`` and ``/health``: a tiny HTTP server on an ephemeral port.

In a multi-process run each process has its own registry, so the frontend's ``/metrics``
shows only the frontend process's metrics. Every role process the launchers start
(``launch/role_main.py``) therefore serves its registry here and publishes the URL in
its discovery entries as ``metrics_url``; ``GET /admin/status`` lists it per instance
and ``dyn bench`` scrapes every one.

``/health`` answers 200 with ``{"role", "instance", "state", "ok"}`` while the process
serves, and 503 while it starts or drains (:class:`ProcessHealth`), so a probe or
Prometheus' blackbox exporter can tell the three apart.

HTTP/1.1 with one request per connection: enough for a scraper, and no web framework in
a worker process. Routes are a table of path → page.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskGroup
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["METRICS_URL_KEY", "Page", "ProcessHealth", "serve_metrics"]

# The discovery metadata key (and ready-line key) that carries the URL.
METRICS_URL_KEY = "metrics_url"
# A scraper sends a few hundred bytes of request head; anything longer is not one.
MAX_HEAD_BYTES = 16 * 1024
# How long a connection may take to send its request head.
READ_TIMEOUT_S = 5.0

# (status, content type, body) of one route, made afresh for each request.
Page = Callable[[], tuple[int, str, bytes]]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


class ProcessHealth:
    """What ``/health`` says of the process: the role instances it hosts and whether it
    serves. Its owner moves ``state`` from ``starting`` to ``serving`` once every role is
    up, and to ``draining`` once it has been asked to stop."""

    def __init__(self, roles: list[str] | None = None) -> None:
        self.state = "starting"
        self.roles: list[str] = list(roles or [])
        self.instance: str | None = None  # known once the first role has started

    def page(self) -> tuple[int, str, bytes]:
        ok = self.state == "serving"
        body = {
            "role": "+".join(self.roles) or None,
            "instance": self.instance,
            "state": self.state,
            "ok": ok,
        }
        return (200 if ok else 503), "application/json", json.dumps(body).encode() + b"\n"

    def live_page(self) -> tuple[int, str, bytes]:
        """``/live``: 200 while the process runs, starting and draining included (a
        liveness probe must not restart a process that is finishing its work)."""
        body = {"role": "+".join(self.roles) or None, "state": self.state, "ok": True}
        return 200, "application/json", json.dumps(body).encode() + b"\n"


def _reason(status: int) -> str:
    return _REASONS[status]


def _response(status: int, content_type: str, body: bytes, *, head_only: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_reason(status)}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return head if head_only else head + body


async def _read_head(stream: SocketStream) -> bytes | None:
    """The request line and headers, or None if the peer sent none in time."""
    data = b""
    with anyio.move_on_after(READ_TIMEOUT_S):
        while b"\r\n\r\n" not in data and len(data) <= MAX_HEAD_BYTES:
            try:
                data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return None
        return data
    return None


def _answer(head: bytes, pages: dict[str, Page]) -> bytes:
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = request_line.split(" ")
    if len(parts) != 3:
        return _response(400, "text/plain", b"bad request\n")
    method, target, _version = parts
    page = pages.get(target.split("?", 1)[0])
    if page is None:
        return _response(404, "text/plain", b"not found\n")
    if method not in ("GET", "HEAD"):
        return _response(405, "text/plain", b"GET only\n")
    status, content_type, body = page()
    return _response(status, content_type, body, head_only=method == "HEAD")


def _url(host: str, port: int) -> str:
    # Advertised as bound, as the transports advertise their addresses.
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    tasks: TaskGroup,
    health: ProcessHealth | None = None,
    *,
    port: int = 0,
) -> str:
    """Serve ``registry`` at ``/metrics`` (and ``health`` at ``/health``) on ``port`` of
    ``host`` (0: a free one) until ``tasks`` is cancelled; return the page's URL
    (``http://HOST:PORT/metrics``)."""

    def metrics() -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(registry)

    pages: dict[str, Page] = {"/metrics": metrics}
    if health is not None:
        pages["/health"] = health.page
        pages["/live"] = health.live_page
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    port = listener.extra(SocketAttribute.local_port)

    async def handle(stream: SocketStream) -> None:
        async with stream:
            head = await _read_head(stream)
            if head is None:
                return
            # The scraper may have gone away meanwhile.
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await stream.send(_answer(head, pages))

    async def serve() -> None:
        async with listener:
            await listener.serve(handle)

    tasks.start_soon(serve)
    return f"{_url(host, port)}/metrics"
