"""free_port: a port that binds, outside the kernel's ephemeral range where it is known."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from dyn.net import ephemeral_range, free_port


def test_free_port_binds_and_lies_below_the_ephemeral_range() -> None:
    bounds = ephemeral_range()
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports), "one process never gets the same port twice"
    for port in ports:
        if bounds is not None:
            assert port < bounds[0], (port, bounds)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()


def test_free_port_skips_a_port_that_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        # Every pick lands on the busy port first: free_port must try again, not return it.
        picks = iter([busy, busy, busy])
        real = random.randrange
        monkeypatch.setattr(random, "randrange", lambda a, b: next(picks, None) or real(a, b))
        monkeypatch.setattr("dyn.net.ephemeral_range", lambda: (busy + 1, busy + 2000))
        port = free_port()
        assert port != busy


@pytest.mark.parametrize("text", ["", "garbage", "1 2 3"])
def test_an_unreadable_range_falls_back_to_the_kernel(tmp_path: Path, text: str) -> None:
    path = tmp_path / "range"
    path.write_text(text)
    assert ephemeral_range(path) is None
    assert ephemeral_range(tmp_path / "missing") is None


def test_a_readable_range_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "range"
    path.write_text("32768\t60999\n")
    assert ephemeral_range(path) == (32768, 60999)
