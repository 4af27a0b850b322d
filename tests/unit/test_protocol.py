"""The guest agent wire format: round trips, split reads, bad frames."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost_guest.protocol import (
    MAX_DATA_CHUNK,
    MAX_DEPTH,
    MAX_FRAME,
    BadFrame,
    FrameDecoder,
    JsonMessage,
    ProtocolError,
    StreamData,
    encode_data,
    encode_json,
    find_sync,
    parse_vsock_ok,
    sync_frame,
    valid_id,
    valid_stream_id,
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
    st.builds(StreamData, st.integers(1, 2**32 - 1), st.binary(max_size=2048)),
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
    ],
)
def test_frames_that_break_the_framing(wire: bytes, error: str) -> None:
    decoder = FrameDecoder()
    ping = encode_json({"id": 1, "type": "ping"})
    # The frames before it are decoded; then the decoder has failed.
    assert decoder.feed(ping + wire) == [JsonMessage({"id": 1, "type": "ping"})]
    assert decoder.error is not None and error in str(decoder.error)
    # The stream has lost its boundaries: the decoder stays failed, and
    # keeps what it had not consumed, from the bad frame's header on.
    assert decoder.unconsumed == wire
    with pytest.raises(ProtocolError, match="already failed"):
        decoder.feed(encode_json({"id": 1}))


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"J{x}", "malformed JSON"),
        (b"J[]", "not an object but list"),
        (b"J7", "not an object but int"),
        (b"J\xff\xfe", "malformed JSON"),
        (b"D\0\0", "too short for a stream id"),
        (b"J" + b"[" * 100_000, "nests deeper than 64"),  # json's own recursion limit
        (b'J' + b'{"a":' * 65 + b"1" + b"}" * 65, "nests deeper than 64"),  # below it
    ],
)
def test_bad_messages_keep_the_session(body: bytes, error: str) -> None:
    # The frame's boundaries are intact: it decodes to a BadFrame, and the
    # frames after it decode as ever.
    decoder = FrameDecoder()
    out = decoder.feed(_frame(body) + encode_json({"id": 2, "type": "ping"}))
    assert isinstance(out[0], BadFrame) and error in out[0].reason
    assert out[1:] == [JsonMessage({"id": 2, "type": "ping"})]


def test_nesting_up_to_the_bound_is_a_message() -> None:
    deep: dict[str, object] = {"id": 1}
    for _ in range(MAX_DEPTH - 1):
        deep = {"a": deep}
    assert FrameDecoder().feed(encode_json(deep)) == [JsonMessage(deep)]
    # A deeper one is refused, naming the request it was, when it was one.
    bad = FrameDecoder().feed(_frame(b'J{"id":9,"x":' + b"[" * 64 + b"]" * 64 + b"}"))
    assert isinstance(bad[0], BadFrame) and bad[0].req_id == 9
    with pytest.raises(ProtocolError, match="deeper than 64"):
        encode_json({"a": deep})


def test_encoders_refuse_what_is_no_frame() -> None:
    with pytest.raises(ProtocolError, match="cannot be encoded"):
        encode_json({"x": object()})
    loop: dict[str, object] = {}
    loop["self"] = loop
    with pytest.raises(ProtocolError, match="cannot be encoded"):
        encode_json(loop)
    for stream_id in (0, 2**32, -1):
        with pytest.raises(ProtocolError, match="does not fit"):
            encode_data(stream_id, b"x")


def test_typed_fields() -> None:
    assert valid_id(0) and valid_id(2**53) and not valid_id(2**53 + 1)
    assert not valid_id(True) and not valid_id(1.0) and not valid_id("1") and not valid_id(-1)
    assert valid_stream_id(2, parity=0) and not valid_stream_id(3, parity=0)
    assert valid_stream_id(3, parity=1) and not valid_stream_id(0)
    assert not valid_stream_id(2**32) and not valid_stream_id(False)


def test_find_sync_skips_look_alikes_and_reads_the_epoch() -> None:
    frame = sync_frame(123, 77)
    assert find_sync(b"junk" + frame + b"after", 123) == (4 + len(frame), 77)
    # Another nonce with the same prefix, a bad header, a truncated frame.
    decoys = sync_frame(1234, 1) + b"\xff\xff\xff\xff" + frame[4:] + frame[:-1]
    assert find_sync(decoys, 123) == (-1, None)
    assert find_sync(decoys + frame, 123) == (len(decoys) + len(frame), 77)
    assert find_sync(encode_json({"sync": 5}), 5) == (len(encode_json({"sync": 5})), None)


def test_oversized_header_is_refused_before_the_body_arrives() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(struct.pack(">I", 2**31)) == []
    assert decoder.error is not None


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
