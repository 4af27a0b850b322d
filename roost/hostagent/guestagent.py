"""Host side of the guest agent protocol: requests by id, events as a stream."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

from roost.driver.channel import Dialer
from roost_guest import protocol

log = logging.getLogger(__name__)


class GuestAgentError(Exception):
    pass


class GuestAgentClient:
    """One connection to the guest agent.

    A reader task routes responses to their waiting request by id and
    events to `events()`; a closed connection fails every pending request.
    """

    def __init__(self, dialer: Dialer) -> None:
        self.dialer = dialer
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._write_lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._reader_task is not None and not self._reader_task.done()

    async def connect(self) -> None:
        reader, writer = await self.dialer.dial()
        self._writer = writer
        self._reader_task = asyncio.ensure_future(self._read_loop(reader))

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        decoder = protocol.FrameDecoder()
        error: Exception = GuestAgentError("connection to the guest agent closed")
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for msg in decoder.feed(data):
                    if isinstance(msg, protocol.JsonMessage):
                        self._route(msg.obj)
        except (OSError, protocol.ProtocolError) as e:
            error = GuestAgentError(f"guest agent connection failed: {e}")
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(error)
            self._pending.clear()
            self._events.put_nowait(None)

    def _route(self, obj: dict[str, Any]) -> None:
        req_id = obj.get("id")
        if isinstance(req_id, int) and req_id in self._pending:
            fut = self._pending.pop(req_id)
            if not fut.done():
                fut.set_result(obj)
        elif "event" in obj:
            self._events.put_nowait(obj)
        else:
            log.warning("unexpected message from guest agent: %r", obj)

    async def request(self, type_: str, timeout: float = 10.0, **params: Any) -> dict[str, Any]:
        if self._writer is None or not self.connected:
            raise GuestAgentError("not connected to the guest agent")
        req_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        try:
            async with self._write_lock:
                self._writer.write(protocol.encode_json({"id": req_id, "type": type_, **params}))
                await self._writer.drain()
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise GuestAgentError(f"guest agent did not answer {type_!r} in {timeout:g}s") from None
        finally:
            self._pending.pop(req_id, None)
        if not reply.get("ok"):
            raise GuestAgentError(str(reply.get("error", "request failed")))
        result: dict[str, Any] = reply.get("result") or {}
        return result

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
