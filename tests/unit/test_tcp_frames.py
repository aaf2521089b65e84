"""The tcp frame codec against the golden vectors, both ways, and under arbitrary bytes."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dyn.transports import _tcp_frames as f

VECTORS_DIR = Path(__file__).resolve().parents[2] / "transports" / "vectors"
SPEC = json.loads((VECTORS_DIR / "vectors.json").read_text())
BY_NAME = {name: code for code, name in f.TYPE_NAMES.items()}


def golden_bytes(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex("".join((VECTORS_DIR / vector["file"]).read_text().split()))


def encode(vector: dict[str, Any]) -> bytes:
    if vector.get("kind") == "preface":
        return f.encode_preface(vector["version"], vector["flags"])
    ftype, sid = BY_NAME[vector["type"]], vector["stream_id"]
    if ftype == f.REQUEST:
        payload = bytes.fromhex(vector["payload_hex"])
        return f.encode_request(sid, vector["path"], vector["headers"], payload)
    if ftype == f.DATA:
        return f.encode_data(sid, bytes.fromhex(vector["body_hex"]))
    if ftype == f.ERROR:
        return f.encode_error(sid, vector["code"], vector["message"])
    if ftype == f.WINDOW:
        return f.encode_window(sid, vector["increment"])
    if ftype in (f.PING, f.PONG):
        make = f.encode_ping if ftype == f.PING else f.encode_pong
        return make(bytes.fromhex(vector["opaque_hex"]))
    return f.encode_frame(ftype, sid)  # END, CANCEL


def describe(frame: f.Frame) -> dict[str, Any]:
    """A decoded frame in the vocabulary of vectors.json."""
    ftype, sid, body = frame
    described: dict[str, Any] = {"type": f.TYPE_NAMES[ftype], "stream_id": sid}
    if ftype == f.REQUEST:
        path, headers, payload = f.parse_request(body)
        described |= {"path": path, "headers": headers, "payload_hex": payload.hex()}
    elif ftype == f.DATA:
        described["body_hex"] = body.hex()
    elif ftype == f.ERROR:
        code, message = f.parse_error(body)
        described |= {"code": code, "message": message}
    elif ftype == f.WINDOW:
        described["increment"] = f.parse_window(body)
    elif ftype in (f.PING, f.PONG):
        described["opaque_hex"] = body.hex()
    return described


VECTORS = SPEC["vectors"]
FRAME_VECTORS = [v for v in VECTORS if v.get("kind") != "preface"]


def test_vectors_cover_every_frame_type_and_the_preface() -> None:
    assert {v["type"] for v in FRAME_VECTORS} == set(f.TYPE_NAMES.values())
    assert any(v.get("kind") == "preface" for v in VECTORS)
    assert SPEC["protocol_version"] == 1


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_encoding_a_description_gives_the_golden_bytes(vector: dict[str, Any]) -> None:
    assert encode(vector).hex() == golden_bytes(vector).hex()


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_decoding_the_golden_bytes_gives_the_description(vector: dict[str, Any]) -> None:
    data = golden_bytes(vector)
    if vector.get("kind") == "preface":
        assert f.decode_preface(data) == vector["version"]
        return
    frames = f.FrameDecoder().feed(data)
    assert len(frames) == 1
    expected = {k: v for k, v in vector.items() if k not in ("name", "file")}
    assert describe(frames[0]) == expected


def test_golden_frames_decode_one_byte_at_a_time() -> None:
    stream = b"".join(golden_bytes(v) for v in FRAME_VECTORS)
    decoder = f.FrameDecoder()
    frames = [frame for i in range(len(stream)) for frame in decoder.feed(stream[i : i + 1])]
    assert [describe(frame)["type"] for frame in frames] == [v["type"] for v in FRAME_VECTORS]
    assert decoder.buffered == 0


@pytest.mark.parametrize("case", SPEC["malformed"], ids=lambda c: c["name"])
def test_malformed_vectors_are_rejected(case: dict[str, Any]) -> None:
    data = bytes.fromhex(case["hex"])
    with pytest.raises(f.FrameError):
        _decode_vector(case["where"], data)


def _decode_vector(where: str, data: bytes) -> None:
    """Decode a test vector as the preface or as frames, as its ``where`` says."""
    if where == "preface":
        f.decode_preface(data[: f.PREFACE_SIZE])
    else:
        for frame in f.FrameDecoder().feed(data):
            describe(frame)


def test_an_oversized_frame_is_rejected_from_its_header_alone() -> None:
    decoder = f.FrameDecoder(max_frame_bytes=1024)
    with pytest.raises(f.FrameError, match=r"outside 5\.\.1024"):
        decoder.feed(f.HEADER.pack(1025, f.DATA, 1))


def test_a_one_mebibyte_data_frame_fits_the_default_limit() -> None:
    body = bytes(range(256)) * 4096
    assert f.FrameDecoder().feed(f.encode_data(7, body)) == [(f.DATA, 7, body)]


# -- properties ---------------------------------------------------------------------------


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in pairwise(points)]


@given(st.binary(max_size=2048), st.lists(st.integers(min_value=0), max_size=8))
def test_arbitrary_bytes_raise_nothing_but_frame_error(data: bytes, cuts: list[int]) -> None:
    decoder = f.FrameDecoder(max_frame_bytes=4096)
    try:
        for chunk in _chunks(data, cuts):
            for frame in decoder.feed(chunk):
                describe(frame)
    except f.FrameError:
        pass


@given(st.binary(min_size=8, max_size=8))
def test_arbitrary_prefaces_raise_nothing_but_frame_error(data: bytes) -> None:
    try:
        assert 0 <= f.decode_preface(data) < 2**16
    except f.FrameError:
        assert data[:4] != f.MAGIC


stream_ids = st.integers(min_value=0, max_value=2**31 - 1).map(lambda n: 2 * n + 1)
text = st.text(max_size=40)
frame_descriptions = st.one_of(
    st.builds(
        lambda sid, path, headers, payload: {
            "type": "REQUEST",
            "stream_id": sid,
            "path": path,
            "headers": headers,
            "payload_hex": payload.hex(),
        },
        stream_ids,
        text,
        st.dictionaries(text, text, max_size=4),
        st.binary(max_size=300),
    ),
    st.builds(
        lambda sid, body: {"type": "DATA", "stream_id": sid, "body_hex": body.hex()},
        stream_ids,
        st.binary(max_size=300),
    ),
    st.builds(lambda sid: {"type": "END", "stream_id": sid}, stream_ids),
    st.builds(lambda sid: {"type": "CANCEL", "stream_id": sid}, stream_ids),
    st.builds(
        lambda sid, code, message: {
            "type": "ERROR",
            "stream_id": sid,
            "code": code,
            "message": message,
        },
        stream_ids,
        text,
        text,
    ),
    st.builds(
        lambda sid, inc: {"type": "WINDOW", "stream_id": sid, "increment": inc},
        stream_ids,
        st.integers(min_value=1, max_value=2**32 - 1),
    ),
    st.builds(
        lambda opaque: {"type": "PING", "stream_id": 0, "opaque_hex": opaque.hex()},
        st.binary(min_size=8, max_size=8),
    ),
)


@given(st.lists(frame_descriptions, max_size=12), st.lists(st.integers(min_value=0), max_size=6))
def test_random_frames_round_trip(descriptions: list[dict[str, Any]], cuts: list[int]) -> None:
    data = b"".join(encode(d) for d in descriptions)
    decoder = f.FrameDecoder()
    frames = [frame for chunk in _chunks(data, cuts) for frame in decoder.feed(chunk)]
    assert [describe(frame) for frame in frames] == descriptions
    assert decoder.buffered == 0
