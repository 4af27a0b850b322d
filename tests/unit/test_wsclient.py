"""The CLI's WebSocket framing (roost.cli.wsclient); the handshake and the
server side are exercised against aiohttp in test_exec_cli.py."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.cli import wsclient


@given(st.binary(max_size=70000), st.integers(min_value=1, max_value=9000))
def test_masked_frames_parse_back_in_any_split(payload: bytes, cut: int) -> None:
    frame = wsclient.encode(wsclient.OP_BINARY, payload)
    assert frame[1] & 0x80  # a client always masks
    reader = wsclient.FrameReader()
    got = []
    for i in range(0, len(frame), cut):
        got += reader.feed(frame[i:i + cut])
    assert got == [(wsclient.OP_BINARY, payload)]


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return struct.pack("!BB", (0x80 if fin else 0) | opcode, len(payload)) + payload


def test_fragments_are_joined_around_control_frames() -> None:
    reader = wsclient.FrameReader()
    data = (server_frame(wsclient.OP_TEXT, b'{"a":', fin=False)
            + server_frame(wsclient.OP_PING, b"p")
            + server_frame(wsclient.OP_CONT, b" 1}"))
    assert reader.feed(data) == [(wsclient.OP_PING, b"p"), (wsclient.OP_TEXT, b'{"a": 1}')]


@pytest.mark.parametrize("data, error", [
    (server_frame(wsclient.OP_CONT, b"x"), "continuation frame without a message"),
    (bytes([0xC1, 0]), "reserved bits"),
    (struct.pack("!BBQ", 0x82, 127, 1 << 40), "larger than 16 MiB"),
])
def test_protocol_errors_are_named(data: bytes, error: str) -> None:
    with pytest.raises(wsclient.WebSocketError, match=error):
        wsclient.FrameReader().feed(data)


def test_accept_key_of_rfc_6455() -> None:  # the example of RFC 6455 section 1.3
    assert wsclient.accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
