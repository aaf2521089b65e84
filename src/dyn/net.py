"""Network helpers shared by roles, launchers and the CLI."""

from __future__ import annotations

import ipaddress
import random
import socket
from pathlib import Path

__all__ = ["ephemeral_range", "free_port", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether a frontend bound to ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Where the kernel hands out ports for bind(("", 0)) and outgoing connections (Linux).
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# How many ports below the ephemeral range free_port picks from, and how often it tries.
_SPAN = 12_000
_TRIES = 64
# Ports this process has handed out already: two callers in a row get different ones.
_handed_out: set[int] = set()


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int] | None:
    """The kernel's ephemeral port range, or None where it cannot be read."""
    try:
        low, high = (int(field) for field in path.read_text().split())
    except (OSError, ValueError):
        return None
    return low, high


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (another process may take it later).

    The port is picked below the kernel's ephemeral range where that range is known. A
    port the kernel picked itself (bind to port 0) would be handed out again by the kernel
    to the next socket that binds port 0 or connects out, and so could be taken in the
    moment between this call and its user's bind; a port outside the range is only taken
    by someone who asks for it by number.
    """
    bounds = ephemeral_range()
    if bounds is not None and bounds[0] > 1024 + 1000:
        low = max(1024, bounds[0] - _SPAN)
        for _ in range(_TRIES):
            port = random.randrange(low, bounds[0])
            if port not in _handed_out and _bindable(host, port):
                _handed_out.add(port)
                return port
    with socket.socket(_family(host)) as sock:
        sock.bind((host, 0))
        picked: int = sock.getsockname()[1]
        _handed_out.add(picked)
        return picked


def _bindable(host: str, port: int) -> bool:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        # As a server binds (SO_REUSEADDR): connections lingering in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
