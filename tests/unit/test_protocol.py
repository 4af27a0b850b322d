"""The guest agent wire format: round trips, split reads, bad frames."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost_guest.protocol import (
    MAX_DATA_CHUNK,
    MAX_FRAME,
    FrameDecoder,
    JsonMessage,
    ProtocolError,
    StreamData,
    encode_data,
    encode_json,
    parse_vsock_ok,
    vsock_connect_line,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
messages = st.one_of(
    st.dictionaries(st.text(max_size=10), json_values, max_size=6).map(JsonMessage),
    st.builds(StreamData, st.integers(0, 2**32 - 1), st.binary(max_size=2048)),
)


def encode(m: JsonMessage | StreamData) -> bytes:
    if isinstance(m, JsonMessage):
        return encode_json(m.obj)
    return encode_data(m.stream_id, m.data)


@given(st.lists(messages, max_size=8), st.lists(st.integers(1, 64), min_size=1))
def test_round_trip_with_arbitrary_split_reads(
    msgs: list[JsonMessage | StreamData], cuts: list[int]
) -> None:
    wire = b"".join(encode(m) for m in msgs)
    decoder = FrameDecoder()
    out = []
    pos = i = 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        out += decoder.feed(wire[pos : pos + step])
        pos += step
        i += 1
    assert out == msgs
    assert decoder.pending == 0


def test_byte_at_a_time() -> None:
    wire = encode_json({"id": 1, "type": "ping"}) + encode_data(7, b"hello")
    decoder = FrameDecoder()
    out = [m for b in wire for m in decoder.feed(bytes([b]))]
    assert out == [JsonMessage({"id": 1, "type": "ping"}), StreamData(7, b"hello")]


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (struct.pack(">I", MAX_FRAME + 1) + b"J", "exceeds the limit"),
        (struct.pack(">I", 0), "empty frame"),
        (struct.pack(">I", 3) + b"Xab", "unknown frame kind"),
        (struct.pack(">I", 4) + b"J{x}", "malformed JSON"),
        (struct.pack(">I", 3) + b"J[]", "not an object"),
        (struct.pack(">I", 3) + b"J\xff\xfe", "malformed JSON"),
        (struct.pack(">I", 3) + b"D\0\0", "too short for a stream id"),
    ],
)
def test_bad_frames(wire: bytes, error: str) -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match=error):
        decoder.feed(wire)
    # The stream has lost its boundaries: the decoder stays failed.
    with pytest.raises(ProtocolError, match="already failed"):
        decoder.feed(encode_json({"id": 1}))


def test_oversized_header_is_refused_before_the_body_arrives() -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(struct.pack(">I", 2**31))


def test_encoders_refuse_oversized_payloads() -> None:
    with pytest.raises(ProtocolError):
        encode_json({"x": "a" * MAX_FRAME})
    with pytest.raises(ProtocolError):
        encode_data(1, b"a" * (MAX_DATA_CHUNK + 1))
    assert len(encode_data(1, b"a" * MAX_DATA_CHUNK)) == 4 + MAX_FRAME


def test_hybrid_vsock_handshake() -> None:
    assert vsock_connect_line() == b"CONNECT 52\n"
    assert parse_vsock_ok(b"OK 1073741824\n") == 1073741824
    with pytest.raises(ProtocolError, match="handshake failed"):
        parse_vsock_ok(b"ERR no listener\n")
