"""The committed gRPC messages match transports/dyn.proto byte for byte, both ways."""

from __future__ import annotations

import pytest

from dyn.transports.grpc._proto.dyn.v1 import CallFrame, CallRequest, End, Error
from dyn.transports.grpc._wire import frame_to_message, message_kind

# Golden encodings, written from the .proto by hand: (field number << 3 | wire type 2).
GOLDEN = [
    (CallFrame(data=b"ab"), bytes.fromhex("0a026162")),
    (CallFrame(data=b""), bytes.fromhex("0a00")),  # an empty item is still an item
    (CallFrame(end=End()), bytes.fromhex("1200")),
    (
        CallFrame(error=Error(code="x", message="yz")),
        bytes.fromhex("1a07") + bytes.fromhex("0a0178") + bytes.fromhex("1202797a"),
    ),
]


@pytest.mark.parametrize(("message", "wire"), GOLDEN)
def test_call_frames_encode_and_decode(message: CallFrame, wire: bytes) -> None:
    assert bytes(message) == wire
    decoded = CallFrame.parse(wire)
    assert message_kind(decoded) == message_kind(message)
    assert bytes(decoded) == wire


def test_call_request_round_trips() -> None:
    request = CallRequest(
        path="ns/c/generate/1",
        headers={"x-request-id": "r", "dyn-timeout": "1.5"},
        payload=b"\x81\xa4text\xa2hi",
        protocol_version=1,
    )
    wire = bytes(request)
    assert wire.startswith(bytes.fromhex("0a0f") + b"ns/c/generate/1")
    assert wire.endswith(bytes.fromhex("2001"))  # field 4, varint 1
    assert CallRequest.parse(wire) == request


def test_frames_from_run_handler() -> None:
    assert bytes(frame_to_message(("data", b"ab", ""))) == GOLDEN[0][1]
    assert bytes(frame_to_message(("end", b"", ""))) == GOLDEN[2][1]
    assert bytes(frame_to_message(("error", "x", "yz"))) == GOLDEN[3][1]


def test_a_frame_with_no_kind_is_recognisable() -> None:
    assert message_kind(CallFrame.parse(b"")) == ""
