"""Host side of the guest agent protocol: one session over a Dialer.

A session starts with a hello and skips every byte before the guest's
matching sync frame (see roost_guest.protocol). A reader task then routes
responses to their request by id, events to `events()`, and data frames to
their TunnelStream. A closed connection fails every pending request and
resets every stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

from roost.driver.channel import Dialer
from roost_guest import protocol

log = logging.getLogger(__name__)

SYNC_TIMEOUT = 5.0


class GuestAgentError(Exception):
    pass


class StreamReset(GuestAgentError):
    pass


class TunnelStream:
    """A byte (or datagram) stream to a socket in the guest, with credit."""

    def __init__(self, client: GuestAgentClient, stream_id: int,
                 datagram: bool = False) -> None:
        self.client = client
        self.id = stream_id
        self.datagram = datagram
        self._credit = protocol.WINDOW
        self._credit_changed = asyncio.Event()
        self._incoming: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._queued = 0
        self.error: str | None = None
        self.closed = False

    # -- from the read loop --------------------------------------------------

    def _deliver(self, data: bytes) -> None:
        if self.closed:
            return
        self._queued += len(data)
        if self._queued > protocol.WINDOW:
            self._reset_local("the guest overran the stream window")
            self.client._send_nowait({"type": "reset", "stream": self.id,
                                      "error": "window overrun"})
            return
        self._incoming.put_nowait(data)

    def _grant(self, n: int) -> None:
        self._credit += n
        self._credit_changed.set()

    def _eof(self) -> None:
        self._incoming.put_nowait(None)

    def _reset_local(self, error: str) -> None:
        if self.closed:
            return
        self.error = error
        self.closed = True
        self._incoming.put_nowait(None)
        self._credit_changed.set()
        self.client._streams.pop(self.id, None)

    # -- for the user --------------------------------------------------------

    async def send(self, data: bytes) -> None:
        """Send all of `data`, waiting for credit; for UDP, one datagram."""
        view = memoryview(data)
        while view:
            while self._credit <= 0 and not self.closed:
                self._credit_changed.clear()
                await self._credit_changed.wait()
            if self.closed:
                raise StreamReset(self.error or "stream closed")
            n = min(len(view), self._credit, protocol.DATA_CHUNK)
            if self.datagram:
                n = len(view)  # a datagram is never split; it may overdraw once
            chunk, view = view[:n], view[n:]
            self._credit -= len(chunk)
            await self.client._send_frame(protocol.encode_data(self.id, bytes(chunk)))

    async def recv(self) -> bytes | None:
        """The next chunk from the guest; None at EOF. Call ack() once used."""
        data = await self._incoming.get()
        if data is None:
            if self.error:
                raise StreamReset(self.error)
            return None
        self._queued -= len(data)
        return data

    async def ack(self, n: int) -> None:
        if not self.closed and n:
            await self.client._send_json({"type": "window", "stream": self.id, "bytes": n})

    async def send_eof(self) -> None:
        if not self.closed:
            await self.client._send_json({"type": "eof", "stream": self.id})

    async def reset(self, error: str = "closed by the host") -> None:
        if self.closed:
            return
        self._reset_local(error)
        with contextlib.suppress(GuestAgentError, OSError):
            await self.client._send_json({"type": "reset", "stream": self.id, "error": error})

    async def splice(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Join this stream to a local connection until both directions end."""

        async def local_to_guest() -> None:
            while True:
                data = await reader.read(protocol.DATA_CHUNK)
                if not data:
                    await self.send_eof()
                    return
                await self.send(data)

        async def guest_to_local() -> None:
            unacked = 0
            while True:
                data = await self.recv()
                if data is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
                unacked += len(data)
                if unacked >= protocol.WINDOW // 4 or self._incoming.empty():
                    await self.ack(unacked)
                    unacked = 0

        up = asyncio.ensure_future(local_to_guest())
        down = asyncio.ensure_future(guest_to_local())
        try:
            await asyncio.gather(up, down)
        except (StreamReset, GuestAgentError, OSError) as e:
            log.debug("stream %d ended: %s", self.id, e)
        finally:
            up.cancel()
            down.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            await self.reset("done")
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class GuestAgentClient:
    def __init__(self, dialer: Dialer) -> None:
        self.dialer = dialer
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._stream_ids = itertools.count(2, 2)  # host streams are even
        self._streams: dict[int, TunnelStream] = {}
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._accepted: asyncio.Queue[tuple[dict[str, Any], TunnelStream]] = asyncio.Queue()
        self._stream_events: dict[int, Callable[[dict[str, Any]], None]] = {}
        self._parts: dict[int, list[Any]] = {}  # long answers, in parts before the reply
        self.closed = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._reader_task is not None and not self._reader_task.done()

    async def connect(self, timeout: float = SYNC_TIMEOUT) -> None:
        """Dial and start a session; raises OSError or GuestAgentError."""
        reader, writer = await self.dialer.dial()
        nonce = secrets.randbits(48)
        try:
            writer.write(protocol.encode_json({"type": "hello", "nonce": nonce}))
            await writer.drain()
            rest = await asyncio.wait_for(_skip_to_sync(reader, nonce), timeout)
        except BaseException as e:
            writer.close()
            if isinstance(e, TimeoutError):
                raise GuestAgentError(f"no answer to hello within {timeout:g}s") from None
            raise
        self._writer = writer
        self._reader_task = asyncio.ensure_future(self._read_loop(reader, rest))

    async def _read_loop(self, reader: asyncio.StreamReader, first: bytes) -> None:
        decoder = protocol.FrameDecoder()
        error = "connection to the guest agent closed"
        try:
            data = first
            while True:
                for msg in decoder.feed(data):
                    if isinstance(msg, protocol.JsonMessage):
                        self._route(msg.obj)
                    else:
                        stream = self._streams.get(msg.stream_id)
                        if stream is not None:
                            stream._deliver(msg.data)
                data = await reader.read(1 << 18)
                if not data:
                    break
        except (OSError, protocol.ProtocolError) as e:
            error = f"guest agent connection failed: {e}"
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(GuestAgentError(error))
            self._pending.clear()
            for stream in list(self._streams.values()):
                stream._reset_local(error)
            self._events.put_nowait(None)
            self.closed.set()

    def _route(self, obj: dict[str, Any]) -> None:
        req_id = obj.get("id")
        kind = obj.get("type")
        if obj.get("event") == "part":  # carries the id of the request it answers
            if isinstance(req_id, int) and req_id in self._parts:
                self._parts[req_id].extend(obj.get("items") or [])
        elif isinstance(req_id, int) and req_id in self._pending:
            fut = self._pending.pop(req_id)
            if not fut.done():
                fut.set_result(obj)
        elif kind in ("window", "eof", "reset"):
            stream = self._streams.get(obj.get("stream", -1))
            if stream is None:
                return
            if kind == "window":
                stream._grant(int(obj.get("bytes", 0)))
            elif kind == "eof":
                stream._eof()
            else:
                stream._reset_local(str(obj.get("error") or "reset by the guest"))
        elif obj.get("event") == "accept":
            # A guest-initiated stream (reverse forward): registered here, in
            # frame order, so none of its data frames can arrive unclaimed.
            stream_id = obj.get("stream")
            if isinstance(stream_id, int) and stream_id % 2 == 1:
                stream = TunnelStream(self, stream_id)
                self._streams[stream_id] = stream
                self._accepted.put_nowait((obj, stream))
        elif "event" in obj and obj.get("stream") in self._stream_events:
            self._stream_events[obj["stream"]](obj)  # e.g. a command's exit (execstream)
        elif "event" in obj:
            self._events.put_nowait(obj)
        else:
            log.warning("unexpected message from guest agent: %r", obj)

    async def _send_frame(self, frame: bytes) -> None:
        if self._writer is None or not self.connected:
            raise GuestAgentError("not connected to the guest agent")
        self._writer.write(frame)
        await self._writer.drain()

    async def _send_json(self, obj: dict[str, Any]) -> None:
        await self._send_frame(protocol.encode_json(obj))

    def _send_nowait(self, obj: dict[str, Any]) -> None:
        if self._writer is not None and self.connected:
            self._writer.write(protocol.encode_json(obj))

    async def notify(self, type_: str, **params: Any) -> None:
        """A message that wants no answer (such as a command's signal)."""
        await self._send_json({"type": type_, **params})

    async def request(self, type_: str, timeout: float = 10.0, **params: Any) -> dict[str, Any]:
        req_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        self._parts[req_id] = []
        try:
            await self._send_json({"id": req_id, "type": type_, **params})
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise GuestAgentError(f"guest agent did not answer {type_!r} in {timeout:g}s") from None
        finally:
            self._pending.pop(req_id, None)
            parts = self._parts.pop(req_id, [])
        if not reply.get("ok"):
            raise GuestAgentError(str(reply.get("error", "request failed")))
        result: dict[str, Any] = reply.get("result") or {}
        if isinstance(result.get("parts"), str):
            result[result.pop("parts")] = parts
        return result

    def new_stream(self, datagram: bool = False) -> TunnelStream:
        """A host stream, registered so that no frame of it arrives unclaimed;
        the request that opens it names its id."""
        stream = TunnelStream(self, next(self._stream_ids), datagram)
        self._streams[stream.id] = stream
        return stream

    def watch_stream(self, stream_id: int, on_event: Callable[[dict[str, Any]], None]) -> None:
        """Route the guest's events that name `stream_id` to `on_event`."""
        self._stream_events[stream_id] = on_event

    def unwatch_stream(self, stream_id: int) -> None:
        self._stream_events.pop(stream_id, None)

    async def open_stream(self, proto: str, *, host: str | None = None,
                          port: int | None = None, path: str | None = None,
                          timeout: float = 10.0) -> TunnelStream:
        """Open a tunnel to host:port (tcp, udp) or path (unix) in the guest."""
        stream = self.new_stream(datagram=proto == "udp")
        params: dict[str, Any] = {"stream": stream.id, "proto": proto}
        if path is not None:
            params["path"] = path
        else:
            params.update(host=host, port=port)
        try:
            await self.request("tunnel", timeout=timeout, **params)
        except BaseException:
            self._streams.pop(stream.id, None)
            stream.closed = True
            raise
        return stream

    async def accepted(self) -> tuple[dict[str, Any], TunnelStream]:
        """The next guest-initiated stream: its accept event and the stream."""
        return await self._accepted.get()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(BaseException):
                await self._reader_task


async def _skip_to_sync(reader: asyncio.StreamReader, nonce: int) -> bytes:
    """Read until the sync frame; return what follows it."""
    marker = protocol.sync_frame(nonce)
    buf = b""
    while True:
        data = await reader.read(65536)
        if not data:
            raise GuestAgentError("the guest agent closed the connection before syncing")
        buf += data
        at = buf.find(marker)
        if at >= 0:
            return buf[at + len(marker) :]
        buf = buf[-(len(marker) - 1) :]  # a marker may straddle two reads
