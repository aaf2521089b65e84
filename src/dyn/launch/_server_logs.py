"""What a helper server's log says when it would not start (etcd, nats-server)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["log_tail"]


def log_tail(path: Path, lines: int = 8) -> str:
    """The last ``lines`` of the log at ``path``, indented for an error message."""
    tail = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(f"  {line}" for line in tail) or "  (no output)"
