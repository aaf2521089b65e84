"""Network helpers shared by roles, launchers and the CLI."""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["free_port", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether a frontend bound to ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (another process may take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
