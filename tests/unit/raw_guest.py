"""A hostile guest for tests of the host side: what guest root can do on the
guest agent's channel. A Unix socket server that answers the host's hello
with a sync frame and then sends whatever the test writes, byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from roost_guest import protocol


class RawSession:
    """One host connection, synced."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 decoder: protocol.FrameDecoder, first: list[protocol.Message]) -> None:
        self.writer = writer
        self.received: asyncio.Queue[protocol.Message | None] = asyncio.Queue()
        for msg in first:
            self.received.put_nowait(msg)
        self._task = asyncio.ensure_future(self._read(reader, decoder))

    async def _read(self, reader: asyncio.StreamReader, decoder: protocol.FrameDecoder) -> None:
        try:
            while data := await reader.read(1 << 16):
                for msg in decoder.feed(data):
                    self.received.put_nowait(msg)
        except (OSError, protocol.ProtocolError):
            pass
        finally:
            self.received.put_nowait(None)

    def send(self, wire: bytes) -> None:
        self.writer.write(wire)

    async def drain(self) -> None:
        await self.writer.drain()

    async def request(self, kind: str, timeout: float = 5) -> dict[str, Any]:
        """The next request of `kind` the host sent (others are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.received.get()
                if msg is None:
                    raise ConnectionError("the host closed the connection")
                if isinstance(msg, protocol.JsonMessage) and msg.obj.get("type") == kind:
                    return msg.obj

    async def host_closed(self, timeout: float = 5) -> None:
        async with asyncio.timeout(timeout):
            while await self.received.get() is not None:
                pass

    def close(self) -> None:
        self.writer.close()
        self._task.cancel()


class RawGuest:
    def __init__(self, path: str, epoch: int = 1) -> None:
        self.path = path
        self.epoch = epoch
        self.sessions: asyncio.Queue[RawSession] = asyncio.Queue()
        self._server: asyncio.Server | None = None
        self._open: list[RawSession] = []

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, self.path)

    async def close(self) -> None:
        for session in self._open:
            session.close()
        if self._server is not None:
            self._server.close()

    async def session(self, timeout: float = 5) -> RawSession:
        async with asyncio.timeout(timeout):
            return await self.sessions.get()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = protocol.FrameDecoder()
        with contextlib.suppress(OSError, protocol.ProtocolError):
            while data := await reader.read(1 << 16):
                messages = decoder.feed(data)
                for i, msg in enumerate(messages):
                    if isinstance(msg, protocol.JsonMessage) and msg.obj.get("type") == "hello":
                        writer.write(protocol.sync_frame(msg.obj["nonce"], self.epoch))
                        session = RawSession(reader, writer, decoder, messages[i + 1 :])
                        self._open.append(session)
                        self.sessions.put_nowait(session)
                        return
        writer.close()
