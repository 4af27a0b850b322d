"""Fuzzed cases of the exec WebSocket (GET /v1/exec), from the x-websocket of
the host agent's OpenAPI document: handshakes with headers kept, dropped or
made odd, sent as raw bytes; and, after a good handshake, first messages
that fit or break the document's client message schemas, or are no JSON,
binary, too big, or a close. Each sent, and its answer described."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from dataclasses import dataclass
from typing import Any

import aiohttp
from hypothesis import strategies as st

from roost_guest import protocol
from tests.unit.api_requests import Document

GOOD_HANDSHAKE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                  "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
ODD_HANDSHAKE = {
    "Upgrade": ["WebSocket", "h2c", "", "websocket, foo", "web socket"],
    "Connection": ["keep-alive", "close", "upgrade", "keep-alive, Upgrade", ""],
    "Sec-WebSocket-Version": ["8", "12", "14", "", "13, 8", "abc"],
    "Sec-WebSocket-Key": ["", "short", base64.b64encode(b"x" * 15).decode(), "!!!!", "a" * 300],
}
ANSWER_TIMEOUT = 15.0


@dataclass(frozen=True)
class Handshake:
    headers: dict[str, str]
    query: str = ""
    body: bytes = b""

    @property
    def good(self) -> bool:
        """As RFC 6455 wants it, and with no input: the upgrade is due."""
        return self.headers == GOOD_HANDSHAKE and not self.query and not self.body

    @property
    def has_input(self) -> bool:
        return bool(self.query or self.body)


@st.composite
def handshakes(draw: st.DrawFn) -> Handshake:
    headers = {}
    for name, good in GOOD_HANDSHAKE.items():
        how = draw(st.sampled_from(["keep", "keep", "keep", "drop", "odd"]))
        if how != "drop":
            headers[name] = good if how == "keep" else draw(st.sampled_from(ODD_HANDSHAKE[name]))
    return Handshake(headers, draw(st.sampled_from(["", "", "", "argv=sh", "x"])),
                     draw(st.sampled_from([b"", b"", b"", b"{}"])))


async def send_handshake(sock: str, h: Handshake) -> tuple[int, dict[str, str], bytes]:
    """The answer's status, headers and body (none after a 101: it is closed
    at once with a close frame)."""
    reader, writer = await asyncio.open_unix_connection(sock)
    try:
        target = "/v1/exec" + ("?" + h.query if h.query else "")
        lines = [f"GET {target} HTTP/1.1", "Host: roost",
                 *(f"{k}: {v}" for k, v in h.headers.items())]
        if h.body:
            lines += ["Content-Type: application/json", f"Content-Length: {len(h.body)}"]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + h.body)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER_TIMEOUT)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers = {}
        for line in header_lines:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if status == 101:
            writer.write(b"\x88\x80" + os.urandom(4))  # a masked close frame
            return status, headers, b""
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), ANSWER_TIMEOUT)
        return status, headers, body
    finally:
        writer.close()


@dataclass(frozen=True)
class FirstMessage:
    kind: str
    text: str | None = None  # a text message; else binary (None: a close)
    binary: bytes | None = None
    valid_request: bool = False  # an ExecRequest the document takes

    def __repr__(self) -> str:  # short: some are half a megabyte
        return f"FirstMessage({self.kind}, {(self.text or self.binary or b'')[:60]!r})"


def first_messages(doc: Document) -> st.SearchStrategy[FirstMessage]:
    ws = doc.doc["paths"]["/v1/exec"]["get"]["x-websocket"]
    request, *controls = ws["clientMessages"]["oneOf"]
    assert request["$ref"].endswith("/ExecRequest"), request
    values = doc.values
    return st.one_of(
        values.valid(request).map(lambda v: FirstMessage("exec request", json.dumps(v),
                                                         valid_request=True)),
        values.broken(request).map(lambda v: FirstMessage("broken exec request",
                                                          json.dumps(v))),
        st.one_of([values.valid(c) for c in controls]).map(
            lambda v: FirstMessage("control message first", json.dumps(v))),
        st.text(max_size=50).map(lambda t: FirstMessage("text, maybe no JSON", t)),
        st.binary(max_size=50).map(lambda b: FirstMessage("binary", binary=b)),
        st.sampled_from([protocol.MAX_FRAME + 1, 2 * protocol.MAX_FRAME]).map(
            lambda n: FirstMessage("too big", json.dumps({"argv": ["x" * n]}))),
        st.just(FirstMessage("close")),
    )


async def send_first(http: aiohttp.ClientSession, m: FirstMessage
                     ) -> tuple[list[Any], int | None]:
    """The server's messages (JSON texts decoded; binary as bytes) up to its
    close, and the close code."""
    out: list[Any] = []
    async with http.ws_connect("/v1/exec", timeout=aiohttp.ClientWSTimeout(ws_close=5),
                               max_msg_size=0) as ws:
        try:
            if m.text is not None:
                await ws.send_str(m.text)
            elif m.binary is not None:
                await ws.send_bytes(m.binary)
            else:
                await ws.close()
                return out, ws.close_code
        except ConnectionError:  # closed while we sent (a message too big)
            return out, ws.close_code
        while True:
            msg = await ws.receive(timeout=ANSWER_TIMEOUT)
            if msg.type == aiohttp.WSMsgType.TEXT:
                out.append(json.loads(msg.data))
            elif msg.type == aiohttp.WSMsgType.BINARY:
                out.append(msg.data)
            else:
                break
    return out, ws.close_code
