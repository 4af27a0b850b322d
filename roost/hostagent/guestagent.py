"""Host side of the guest agent protocol: one session over a Dialer.

A session starts with a hello and skips every byte before the guest's
matching sync frame (see roost_guest.protocol). A reader task then routes
responses to their request by id, events to `events()` (but those about
one host stream, such as a command's exit, to that stream's watcher), and
data frames to their TunnelStream. A closed connection fails every pending request and
resets every stream.

The guest is not trusted, and no frame may end the reader but by closing
the session: a frame that is no valid message, a reply to no pending
request, a field of the wrong type or an event of a wrong shape is dropped,
counted (`rejected`) and logged (the first few, then one in a thousand); a
frame that breaks the framing, an epoch that says the guest agent
restarted, or a guest that stops answering the heartbeat closes the
session, and the next use opens a new one. What the guest can make the
host hold is bounded: EVENT_QUEUE events, ACCEPT_BACKLOG streams waiting
to be taken, MAX_GUEST_STREAMS open guest-initiated streams, MAX_PART_ITEMS
items of one long answer, SEND_BUFFER_LIMIT bytes unread by the guest.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

from roost.driver.channel import Dialer
from roost.hostagent.guestevents import event_problem
from roost_guest import protocol

log = logging.getLogger(__name__)

SYNC_TIMEOUT = 5.0
# Events wait here for their consumer (port forwarding, health). When it is
# full the reader waits too (backpressure) rather than drop: a ports event is
# a change, and losing one would leave a forward wrong for good. A guest
# that floods events then finds its own writes blocked, since the host
# stops reading; it slows itself, while the host agent's other work goes on.
EVENT_QUEUE = 256
# Guest-initiated streams not yet taken by serve_reverse. Beyond it, a new
# one is refused with a reset, like a full listen backlog: refusing costs the
# reader nothing, and waiting would stall every reply behind one listener.
ACCEPT_BACKLOG = 64
MAX_GUEST_STREAMS = 1024  # guest-initiated streams open at once; more are refused
MAX_PART_ITEMS = 1_000_000  # items of one long answer (e.g. diff)
MAX_PART_BYTES = 256 * 1024 * 1024  # and their JSON: what a guest can make the host hold
# Frames the host writes without waiting (resets, refusals) are dropped once
# this much is unread by the guest, beyond the one data frame each open
# stream may have written before it waits (so a guest that is only busy
# with the streams' own data still gets them), rather than queued without
# bound.
SEND_BUFFER_LIMIT = 1 << 20
# A request's timeout is for a guest agent that does not answer, not for one
# busy moving the streams' data: its answer can sit behind megabytes of it
# in the channel (64 tunnels at full window under TCG took over 10 s). While
# stream data or credit came from the guest within the timeout (at most
# BUSY_HEARD), the wait goes on, up to BUSY_GRACE more.
BUSY_HEARD = 5.0
BUSY_GRACE = 60.0
# After this long without a frame from the guest, a ping; no answer in
# HEARTBEAT_TIMEOUT closes the session (a guest agent hung, or restarted in a
# way its announcement could not tell, e.g. killed in the middle of a frame).
HEARTBEAT_IDLE = 5.0
HEARTBEAT_TIMEOUT = 20.0
LOG_FIRST = 10  # bad frames logged per session, then one in LOG_EVERY
LOG_EVERY = 1000


StreamWatcher = Callable[[dict[str, Any]], str]


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
        self._eof_seen = False
        self._unsendable = ""  # why the guest takes no more data (the stream stays readable)

    # -- from the read loop --------------------------------------------------

    def _deliver(self, data: bytes) -> None:
        if self.closed or not data:
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
        if not self._eof_seen and not self.closed:
            self._eof_seen = True
            self._incoming.put_nowait(None)

    def _reset_local(self, error: str) -> None:
        if self.closed:
            return
        self.error = error
        self.closed = True
        self._incoming.put_nowait(None)
        self._credit_changed.set()
        self.client._forget(self)

    # -- for the user --------------------------------------------------------

    async def send(self, data: bytes) -> None:
        """Send all of `data`, waiting for credit; for UDP, one datagram."""
        view = memoryview(data)
        while view:
            while self._credit <= 0 and not self.closed and not self._unsendable:
                self._credit_changed.clear()
                await self._credit_changed.wait()
            if self.closed or self._unsendable:
                raise StreamReset(self.error or self._unsendable or "stream closed")
            n = min(len(view), self._credit, protocol.DATA_CHUNK)
            if self.datagram:
                n = len(view)  # a datagram is never split; it may overdraw once
            chunk, view = view[:n], view[n:]
            self._credit -= len(chunk)
            await self.client._send_frame(protocol.encode_data(self.id, bytes(chunk)))

    def stop_sending(self, reason: str) -> None:
        """The guest will take no more data (e.g. the command it fed has exited,
        and no credit will come back): send() fails with `reason` from now
        on, instead of waiting for credit; what was received stays readable."""
        self._unsendable = reason
        self._credit_changed.set()

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
    def __init__(self, dialer: Dialer, *, heartbeat_idle: float = HEARTBEAT_IDLE,
                 heartbeat_timeout: float = HEARTBEAT_TIMEOUT) -> None:
        self.dialer = dialer
        self.heartbeat_idle = heartbeat_idle
        self.heartbeat_timeout = heartbeat_timeout
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._stream_ids = itertools.count(2, 2)  # host streams are even
        self._opening: set[asyncio.Future[None]] = set()  # optimistic opens' answers
        self._streams: dict[int, TunnelStream] = {}
        self._guest_streams = 0  # of those, guest-initiated (odd ids)
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(EVENT_QUEUE)
        self._accepted: asyncio.Queue[tuple[dict[str, Any], TunnelStream]] = asyncio.Queue(
            ACCEPT_BACKLOG)
        # Host streams whose events (a command's exit) go to their owner, not events().
        self._stream_events: dict[int, StreamWatcher] = {}
        self._parts: dict[int, list[Any]] = {}  # long answers, in parts before the reply
        self._part_bytes: dict[int, int] = {}  # their size so far
        self._lost: str | None = None  # why the session is to end, set while routing
        self._heard = 0.0  # loop time of the last bytes from the guest
        self._streamed = 0.0  # loop time of the read that brought its last stream data or credit
        self.epoch: int | None = None  # the guest side's, from the sync frame
        self.frames = 0  # frames received in this session
        self.rejected = 0  # of those, dropped as bad
        self.refused_streams = 0  # guest-initiated streams refused (backlog full)
        self.error: str | None = None  # why the session ended
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
            rest, self.epoch = await asyncio.wait_for(_skip_to_sync(reader, nonce), timeout)
        except BaseException as e:
            writer.close()
            if isinstance(e, TimeoutError):
                raise GuestAgentError(f"no answer to hello within {timeout:g}s") from None
            raise
        self._writer = writer
        self._heard = asyncio.get_running_loop().time()
        self._reader_task = asyncio.ensure_future(self._read_loop(reader, rest))
        self._heartbeat_task = asyncio.ensure_future(self._heartbeat())

    async def _read_loop(self, reader: asyncio.StreamReader, first: bytes) -> None:
        loop = asyncio.get_running_loop()
        decoder = protocol.FrameDecoder()
        error = "connection to the guest agent closed"
        try:
            data = first
            while True:
                for msg in decoder.feed(data):
                    self.frames += 1
                    event = self._route_message(msg)
                    if event is not None:
                        await self._events.put(event)  # waits while full: see EVENT_QUEUE
                    if self._lost:
                        break
                if self._lost:
                    error = self._lost
                    break
                if decoder.error is not None:  # after the frames before it
                    raise decoder.error
                data = await reader.read(1 << 18)
                if not data:
                    break
                self._heard = loop.time()
        except protocol.ProtocolError as e:
            error = f"the guest agent sent a broken frame ({e}); session closed"
        except OSError as e:
            error = f"guest agent connection failed: {e}"
        except asyncio.CancelledError:
            if self._lost is None:
                error = "session closed by the host"
                raise
            error = self._lost  # ended by _lose: the reader ends as if it read that
        except Exception as e:  # a bug here ends the session with an error, never silently
            log.exception("guest agent session failed")
            error = f"guest agent session failed: {e!r}"
        finally:
            self._end(error)

    def _end(self, error: str) -> None:
        """The session is over: fail what waits on it and tell the guest."""
        if self.error is None:
            self.error = error
            if not error.startswith("session closed by the host"):
                log.info("guest agent session ended: %s", error)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(GuestAgentError(error))
        self._pending.clear()
        for stream in list(self._streams.values()):
            stream._reset_local(error)
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(None)  # if full, events() ends once it is drained
        if self._writer is not None:
            self._writer.close()
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        self.closed.set()

    def _lose(self, reason: str) -> None:
        """End the session from outside the reader."""
        self._lost = self._lost or reason
        if self._reader_task is not None:
            self._reader_task.cancel()

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.heartbeat_idle)
            if loop.time() - self._heard < self.heartbeat_idle:
                continue
            try:
                await self.request("ping", timeout=self.heartbeat_timeout)
            except GuestAgentError as e:
                if self.connected:
                    self._lose(f"the guest agent does not answer ({e}); session closed")
                return

    def _complain(self, problem: str) -> None:
        self.rejected += 1
        if self.rejected <= LOG_FIRST or self.rejected % LOG_EVERY == 0:
            log.warning("guest agent: %s (%d bad frames in this session)", problem,
                        self.rejected)

    # -- routing: never raises, whatever the frame ----------------------------

    def _route_message(self, msg: protocol.Message) -> dict[str, Any] | None:
        """Route one message; an event for events() is returned, not queued here."""
        try:
            if isinstance(msg, protocol.JsonMessage):
                return self._route(msg.obj)
            if isinstance(msg, protocol.StreamData):
                stream = self._streams.get(msg.stream_id)
                if stream is not None:
                    self._streamed = self._heard
                    stream._deliver(msg.data)
                else:  # the guest would hold it open, waiting for a window
                    self._send_nowait({"type": "reset", "stream": msg.stream_id,
                                       "error": "no such stream on the host"})
            else:
                self._complain(msg.reason)
        except Exception as e:  # a bug: this frame is lost, the session goes on
            log.exception("routing a guest agent frame failed")
            self._complain(f"routing failed: {e!r}")
        return None

    def _route(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        if "event" in obj:
            return self._route_event(obj)
        if "id" in obj:
            self._route_reply(obj)
            return None
        kind = obj.get("type")
        if kind in protocol.STREAM_CONTROL:
            self._route_control(kind, obj)
        elif obj.get("ok") is False:
            # An error about no request: a frame of ours the guest refused.
            error = _short(obj.get("error"))
            if obj.get("closed") is True:
                self._lost = f"the guest agent closed the session: {error}"
            else:
                self._complain(f"the guest agent refused a frame: {error}")
        else:
            self._complain(f"unexpected message {_short(obj)}")
        return None

    def _route_reply(self, obj: dict[str, Any]) -> None:
        req_id = obj.get("id")
        if not protocol.valid_id(req_id):
            self._complain(f"a reply with a bad id {_short(req_id)}")
            return
        fut = self._pending.pop(req_id, None)
        if fut is None:
            self._complain(f"a reply to no pending request (id {req_id}): duplicate or unknown")
            return
        if problem := _reply_problem(obj):
            self._complain(problem)
            obj = {"id": req_id, "ok": False,
                   "error": f"the guest agent's reply is malformed: {problem}"}
        if not fut.done():
            fut.set_result(obj)

    def _route_control(self, kind: str, obj: dict[str, Any]) -> None:
        stream_id = obj.get("stream")
        if not protocol.valid_stream_id(stream_id):
            self._complain(f"{kind} for a bad stream id {_short(stream_id)}")
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # gone already
        if kind == "window":
            n = obj.get("bytes")
            if not protocol.is_int(n) or not 0 <= n <= protocol.WINDOW:
                self._complain(f"window of {_short(n)} bytes")
                return
            self._streamed = self._heard
            stream._grant(n)
        elif kind == "eof":
            stream._eof()
        else:
            error = obj.get("error")
            stream._reset_local(error[:200] if isinstance(error, str) and error
                                else "reset by the guest")

    def _route_event(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        kind = obj["event"]
        if kind == "part":  # carries the id of the request it answers
            self._add_part(obj)
        elif kind == "accept":
            self._accept(obj)
        elif kind in protocol.STREAM_EVENTS:
            self._route_stream_event(kind, obj)
        elif kind == "started":
            epoch = obj.get("epoch")
            if not protocol.valid_id(epoch):
                self._complain(f"started with a bad epoch {_short(epoch)}")
            elif epoch != self.epoch:
                self._lost = "the guest agent restarted; session closed"
        elif not isinstance(kind, str):
            self._complain(f"an event named {_short(kind)}")
        elif problem := event_problem(kind, obj):
            self._complain(problem)
        else:
            return obj
        return None

    def _route_stream_event(self, kind: str, obj: dict[str, Any]) -> None:
        """An event about one host stream (a command's exit) to its watcher."""
        stream_id = obj.get("stream")
        if not protocol.valid_stream_id(stream_id, parity=0):
            self._complain(f"{kind} event for a bad stream id {_short(stream_id)}")
            return
        watcher = self._stream_events.get(stream_id)
        if watcher is None:
            return  # its owner has gone: a command killed as its client left
        if problem := watcher(obj):
            self._complain(f"{kind} event for stream {stream_id}: {problem}")

    def _add_part(self, obj: dict[str, Any]) -> None:
        req_id, items = obj.get("id"), obj.get("items")
        parts = self._parts.get(req_id) if protocol.valid_id(req_id) else None
        if parts is None or not isinstance(items, list):
            self._complain(f"a part for {_short(req_id)} of a wrong shape or late")
            return
        assert isinstance(req_id, int)  # valid_id
        size = self._part_bytes.get(req_id, 0) + len(json.dumps(items, separators=(",", ":")))
        self._part_bytes[req_id] = size
        if len(parts) + len(items) > MAX_PART_ITEMS or size > MAX_PART_BYTES:
            self._part_bytes.pop(req_id, None)
            del self._parts[req_id]
            fut = self._pending.pop(req_id, None)
            if fut is not None and not fut.done():
                fut.set_result({"id": req_id, "ok": False, "error":
                                f"the guest agent sent more than {MAX_PART_ITEMS} items "
                                f"or {MAX_PART_BYTES >> 20} MiB in one answer"})
            return
        parts.extend(items)

    def _accept(self, obj: dict[str, Any]) -> None:
        # A guest-initiated stream (reverse forward): registered here, in
        # frame order, so none of its data frames can arrive unclaimed.
        stream_id = obj.get("stream")
        if not protocol.valid_stream_id(stream_id, parity=1) or stream_id in self._streams:
            self._complain(f"accept of a bad or duplicate stream id {_short(stream_id)}")
            return
        if self._accepted.full() or self._guest_streams >= MAX_GUEST_STREAMS:
            self.refused_streams += 1
            if self.refused_streams <= LOG_FIRST or self.refused_streams % LOG_EVERY == 0:
                log.warning("guest agent: refusing a guest-initiated stream: %d waiting, %d "
                            "open (%d refused in this session)", self._accepted.qsize(),
                            self._guest_streams, self.refused_streams)
            self._send_nowait({"type": "reset", "stream": stream_id,
                               "error": "the host takes no more streams now"})
            return
        stream = TunnelStream(self, stream_id)
        self._streams[stream.id] = stream
        self._guest_streams += 1
        self._accepted.put_nowait((obj, stream))

    def _forget(self, stream: TunnelStream) -> None:
        if self._streams.get(stream.id) is stream:
            del self._streams[stream.id]
            if stream.id % 2 == 1:
                self._guest_streams -= 1

    async def _send_frame(self, frame: bytes) -> None:
        if self._writer is None or not self.connected:
            raise GuestAgentError("not connected to the guest agent")
        self._writer.write(frame)
        await self._writer.drain()

    async def _send_json(self, obj: dict[str, Any]) -> None:
        try:
            frame = protocol.encode_json(obj)
        except protocol.ProtocolError as e:
            raise GuestAgentError(f"cannot send this request: {e}") from None
        await self._send_frame(frame)

    def _send_nowait(self, obj: dict[str, Any]) -> None:
        if self._writer is None or not self.connected:
            return
        limit = SEND_BUFFER_LIMIT + len(self._streams) * protocol.MAX_FRAME
        if self._writer.transport.get_write_buffer_size() > limit:
            self._complain("the guest agent does not read; a frame to it is dropped")
            return
        self._writer.write(protocol.encode_json(obj))

    async def notify(self, type_: str, **params: Any) -> None:
        """A message that wants no answer (such as a command's signal)."""
        await self._send_json({"type": type_, **params})

    def _issue(self, type_: str, params: dict[str, Any]
               ) -> tuple[int, asyncio.Future[dict[str, Any]]]:
        """Write a request now (before any frame written after this call) and
        register its answer's future; raises GuestAgentError if not connected."""
        if self._writer is None or not self.connected:
            raise GuestAgentError("not connected to the guest agent")
        try:
            frame = protocol.encode_json({"id": (req_id := next(self._ids)), "type": type_,
                                          **params})
        except protocol.ProtocolError as e:
            raise GuestAgentError(f"cannot send this request: {e}") from None
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        self._parts[req_id] = []
        self._writer.write(frame)
        return req_id, fut

    async def _answer(self, type_: str, req_id: int, fut: asyncio.Future[dict[str, Any]],
                      timeout: float) -> dict[str, Any]:
        try:
            reply = await self._busy_wait(fut, timeout)
        except TimeoutError:
            raise GuestAgentError(f"guest agent did not answer {type_!r} in {timeout:g}s") from None
        finally:
            self._pending.pop(req_id, None)
            parts = self._parts.pop(req_id, [])
            self._part_bytes.pop(req_id, None)
        if reply.get("ok") is not True:
            raise GuestAgentError(str(reply.get("error", "request failed")))
        result: dict[str, Any] = reply.get("result") or {}  # a dict: see _reply_problem
        if isinstance(result.get("parts"), str):
            result[result.pop("parts")] = parts
        return result

    async def _busy_wait(self, fut: asyncio.Future[dict[str, Any]],
                         timeout: float) -> dict[str, Any]:
        """`fut`'s result; TimeoutError after `timeout`, or, while the guest
        keeps moving stream data (see BUSY_HEARD), once that stops too or
        BUSY_GRACE more has passed."""
        loop = asyncio.get_running_loop()
        quiet = min(timeout, BUSY_HEARD)
        start = loop.time()
        deadline = start + timeout
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(fut),
                                              max(0.0, deadline - loop.time()))
            except TimeoutError:
                now = loop.time()
                if now - self._streamed >= quiet or now - start >= timeout + BUSY_GRACE \
                        or not self.connected:
                    fut.cancel()
                    raise
                deadline = min(self._streamed + quiet, start + timeout + BUSY_GRACE)

    async def request(self, type_: str, timeout: float = 10.0, **params: Any) -> dict[str, Any]:
        req_id, fut = self._issue(type_, params)
        try:
            assert self._writer is not None
            await self._writer.drain()
        except BaseException:
            self._pending.pop(req_id, None)
            self._parts.pop(req_id, None)
            self._part_bytes.pop(req_id, None)
            raise
        return await self._answer(type_, req_id, fut, timeout)

    def new_stream(self, datagram: bool = False) -> TunnelStream:
        """A host stream, registered so that no frame of it arrives unclaimed;
        the request that opens it names its id."""
        stream = TunnelStream(self, next(self._stream_ids), datagram)
        self._streams[stream.id] = stream
        return stream

    def watch_stream(self, stream_id: int, on_event: StreamWatcher) -> None:
        """Route the guest's stream events (protocol.STREAM_EVENTS) that name
        `stream_id` to `on_event`, which says what is wrong with one ("": nothing)."""
        self._stream_events[stream_id] = on_event

    def unwatch_stream(self, stream_id: int) -> None:
        self._stream_events.pop(stream_id, None)

    async def open_stream(self, proto: str, *, host: str | None = None,
                          port: int | None = None, path: str | None = None,
                          timeout: float = 10.0, optimistic: bool = False) -> TunnelStream:
        """Open a tunnel to host:port (tcp, udp) or path (unix) in the guest.

        `optimistic`: return at once, the request sent; what is sent on the
        stream follows it (the guest queues it until its connect is made),
        saving a round trip per connection. A refusal then resets the
        stream, as the guest's own reset would."""
        stream = self.new_stream(datagram=proto == "udp")
        params: dict[str, Any] = {"stream": stream.id, "proto": proto}
        if path is not None:
            params["path"] = path
        else:
            params.update(host=host, port=port)
        if optimistic:
            try:
                req_id, fut = self._issue("tunnel", params)
            except BaseException:
                self._forget(stream)
                stream.closed = True
                raise
            task = asyncio.ensure_future(self._confirm_open(stream, req_id, fut, timeout))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)
            return stream
        try:
            await self.request("tunnel", timeout=timeout, **params)
        except BaseException:
            self._gave_up_opening(stream)
            raise
        return stream

    def _gave_up_opening(self, stream: TunnelStream, error: str = "") -> None:
        """A tunnel that did not open (refused, timed out, or the local peer
        left): forgotten here; the guest may still be connecting, and must
        not keep what it opens."""
        if error:
            stream._reset_local(error)
        self._forget(stream)
        stream.closed = True
        self._send_nowait({"type": "reset", "stream": stream.id,
                           "error": "the host gave up opening the stream"})

    async def _confirm_open(self, stream: TunnelStream, req_id: int,
                            fut: asyncio.Future[dict[str, Any]], timeout: float) -> None:
        try:
            await self._answer("tunnel", req_id, fut, timeout)
        except GuestAgentError as e:
            log.info("tunnel %d: %s", stream.id, e)
            self._gave_up_opening(stream, str(e))
        except asyncio.CancelledError:
            self._gave_up_opening(stream, "session closed by the host")
            raise

    async def accepted(self) -> tuple[dict[str, Any], TunnelStream]:
        """The next guest-initiated stream: its accept event and the stream."""
        return await self._accepted.get()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """The guest's events until the session ends."""
        while not (self.closed.is_set() and self._events.empty()):
            event = await self._events.get()
            if event is None:
                return
            yield event

    async def close(self) -> None:
        for task in list(self._opening):
            task.cancel()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(BaseException):
                await self._reader_task
        if self.error is None:  # the reader was cancelled before it ever ran
            self._end("session closed by the host")


async def _skip_to_sync(reader: asyncio.StreamReader, nonce: int) -> tuple[bytes, int | None]:
    """Read until the sync frame; return what follows it and the guest's epoch."""
    buf = b""
    keep = protocol.SYNC_MAX + protocol.HEADER_SIZE  # a sync frame may straddle two reads
    while True:
        data = await reader.read(65536)
        if not data:
            raise GuestAgentError("the guest agent closed the connection before syncing")
        buf += data
        end, epoch = protocol.find_sync(buf, nonce)
        if end >= 0:
            return buf[end:], epoch
        buf = buf[-keep:]


def _reply_problem(reply: dict[str, Any]) -> str:
    ok = reply.get("ok")
    if ok is True:
        if not isinstance(reply.get("result", {}), dict):
            return "its result is not an object"
    elif ok is False:
        if not isinstance(reply.get("error", ""), str):
            return "its error is not a string"
    else:
        return "its ok is not a boolean"
    return ""


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
