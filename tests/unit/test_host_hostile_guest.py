"""The host agent's client survives whatever a guest sends: bad frames are
dropped and counted, a frame that breaks the framing closes the session
cleanly, and what a flooding guest can make the host hold is bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from roost.driver.channel import UnixDialer
from roost.hostagent import guestagent
from roost.hostagent.execstream import ExecSpec, GuestExec
from roost.hostagent.guestagent import GuestAgentClient, GuestAgentError
from roost_guest import protocol
from tests.unit.raw_guest import RawGuest, RawSession


def frame(obj: dict[str, Any]) -> bytes:
    return protocol.encode_json(obj)


def raw(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


@pytest.fixture
async def guest(tmp_path: Path) -> AsyncIterator[RawGuest]:
    g = RawGuest(str(tmp_path / "ga.sock"), epoch=42)
    await g.start()
    yield g
    await g.close()


async def _connect(guest: RawGuest, **kw: float) -> tuple[GuestAgentClient, RawSession]:
    client = GuestAgentClient(UnixDialer(guest.path), **kw)
    await client.connect()
    return client, await guest.session()


async def _ping(client: GuestAgentClient, session: RawSession) -> asyncio.Task[dict[str, Any]]:
    task = asyncio.ensure_future(client.request("ping"))
    req = await session.request("ping")
    session.send(frame({"id": req["id"], "ok": True, "result": {"pong": True}}))
    return task


# Each is dropped and counted; none ends the session.
BAD_FRAMES = [
    raw(b"J[1,2]"), raw(b"J\xff"), raw(b"J" + b"[" * 200_000), raw(b"D\0"),
    raw(b"J" + b'{"x":' * 70 + b"1" + b"}" * 70),
    frame({"id": True, "ok": True, "result": {}}),  # True == 1 in Python, not on the wire
    frame({"id": [1], "ok": True}), frame({"id": 99, "ok": True}), frame({"id": -1}),
    frame({"type": "window", "stream": [2], "bytes": 1}),
    frame({"type": "window", "stream": 0, "bytes": 1}),
    frame({"type": "eof", "stream": {"a": 1}}),
    frame({"event": "ports", "added": [{"proto": "tcp", "ip": "x", "port": 1}]}),
    frame({"event": "ports", "added": [{"proto": "tcp", "ip": "::1", "port": True}]}),
    frame({"event": "ports", "removed": "all"}),
    frame({"event": "health", "summary": ["x"]}),
    frame({"event": "worker", "state": 3}),
    frame({"event": "probes", "probes": [1]}),
    frame({"event": "nonsense"}), frame({"event": ["accept"]}),
    frame({"event": "accept", "stream": 2}),  # even: a host stream id
    frame({"event": "accept", "stream": [1]}),
    frame({"event": "part", "id": 1, "items": {"a": 1}}),
    frame({"event": "exit", "stream": 3, "exitCode": 0}),  # odd: not a host stream
    frame({"event": "exec-refused", "stream": [2]}),
    frame({"event": "started", "epoch": "new"}),
    frame({"ok": False, "error": "the guest refused a frame"}),
    frame({"hello": "world"}),
]


async def test_bad_frames_are_dropped_and_the_session_goes_on(guest: RawGuest) -> None:
    client, session = await _connect(guest)
    assert client.epoch == 42
    pending = asyncio.ensure_future(client.request("ping"))
    req = await session.request("ping")
    for wire in BAD_FRAMES:
        session.send(wire)
    # A malformed reply to a pending request fails that request, clearly.
    session.send(frame({"id": req["id"], "ok": True, "result": ["not", "an", "object"]}))
    with pytest.raises(GuestAgentError, match="reply is malformed: its result is not an object"):
        await pending
    assert await (await _ping(client, session)) == {"pong": True}
    assert client.connected and client.rejected == len(BAD_FRAMES) + 1
    assert client._events.empty()  # no malformed event reached a consumer
    # The same epoch again is no restart; another one is.
    session.send(frame({"event": "started", "epoch": 42}))
    assert await (await _ping(client, session)) == {"pong": True}
    session.send(frame({"event": "started", "epoch": 43}))
    await asyncio.wait_for(client.closed.wait(), 5)
    assert client.error == "the guest agent restarted; session closed"
    await session.host_closed()


async def test_a_command_s_exit_is_checked_before_it_counts(guest: RawGuest) -> None:
    """A guest that lies about a command gets no pid nor exit of the wrong type
    through: the start fails clearly, a malformed exit is dropped, the real one
    settles the command; an exit for a stream nobody watches is no bad frame."""
    client, session = await _connect(guest)
    start = asyncio.ensure_future(GuestExec.start(client, ExecSpec(["true"])))
    req = await session.request("exec")
    assert (req["stream"] % 2, req["stderr"] % 2) == (0, 0)
    session.send(frame({"id": req["id"], "ok": True, "result": {"pid": "1"}}))
    with pytest.raises(GuestAgentError, match="reply has no pid"):
        await start
    assert (await session.request("reset"))["stream"] == req["stream"]  # the guest kills it
    start = asyncio.ensure_future(GuestExec.start(client, ExecSpec(["true"])))
    req = await session.request("exec")
    session.send(frame({"id": req["id"], "ok": True, "result": {"pid": 7}}))
    run = await start
    for bad in ({"exitCode": "0"}, {"exitCode": 0, "timedOut": 1}, {"signal": 9},
                {"exitCode": 2**40}):
        session.send(frame({"event": "exit", "stream": run.stdio.id, **bad}))
    session.send(frame({"event": "exit", "stream": 2000, "exitCode": 0}))  # nobody's
    session.send(frame({"event": "exit", "stream": run.stdio.id, "exitCode": 3,
                        "signal": None, "timedOut": False, "killed": False, "seconds": 0.1}))
    assert (await asyncio.wait_for(run.wait(), 5))["exitCode"] == 3
    assert client.rejected == 4 and client.connected
    await run.close()
    await client.close()


@pytest.mark.parametrize("wire", [b"\x7f\xff\xff\xff", b"\0\0\0\0", b"\0\0\0\x02X!"])
async def test_a_broken_frame_closes_the_session_cleanly(guest: RawGuest, wire: bytes) -> None:
    client, session = await _connect(guest)
    pending = asyncio.ensure_future(client.request("info"))
    await session.request("info")
    events = asyncio.ensure_future(_all(client.events()))
    session.send(wire)
    with pytest.raises(GuestAgentError, match="broken frame"):
        await pending
    assert await events == []
    assert client._reader_task is not None and client._reader_task.exception() is None
    assert not client.connected
    await session.host_closed()  # the host closed its end: the guest knows
    with pytest.raises(GuestAgentError, match="not connected"):
        await client.request("ping")
    # The next session is served.
    client, session = await _connect(guest)
    assert await (await _ping(client, session)) == {"pong": True}
    await client.close()


async def test_the_guest_closing_the_session_ends_it(guest: RawGuest) -> None:
    client, session = await _connect(guest)
    session.send(frame({"ok": False, "error": "protocol error: x; session closed",
                        "closed": True}))
    await asyncio.wait_for(client.closed.wait(), 5)
    assert client.error == "the guest agent closed the session: 'protocol error: x; session closed'"


async def test_a_silent_guest_fails_the_heartbeat(guest: RawGuest) -> None:
    client, session = await _connect(guest, heartbeat_idle=0.2, heartbeat_timeout=0.3)
    await session.request("ping", timeout=2)  # the heartbeat; never answered
    await asyncio.wait_for(client.closed.wait(), 2)
    assert client.error is not None and "does not answer" in client.error
    assert client._reader_task is not None and client._reader_task.exception() is None
    # A guest that answers keeps its session.
    client, session = await _connect(guest, heartbeat_idle=0.2, heartbeat_timeout=0.3)
    for _ in range(3):
        req = await session.request("ping", timeout=2)
        session.send(frame({"id": req["id"], "ok": True, "result": {"pong": True}}))
    assert client.connected
    await client.close()


async def test_an_event_flood_is_held_back_not_queued_without_bound(guest: RawGuest) -> None:
    client, session = await _connect(guest)
    flood = 20 * guestagent.EVENT_QUEUE
    pending = asyncio.ensure_future(client.request("info"))
    req = await session.request("info")
    for i in range(flood):
        session.send(frame({"event": "worker", "state": "busy", "n": i}))
    session.send(frame({"id": req["id"], "ok": True, "result": {"behind": "the flood"}}))
    await asyncio.sleep(0.5)
    # Nobody takes events: the queue is full and the reader waits for room,
    # so the rest stays in the socket (and then in the guest's own buffers).
    assert client._events.qsize() == guestagent.EVENT_QUEUE
    assert client.connected and not pending.done()
    received = [e["n"] async for e in _take(client.events(), flood)]
    assert received == list(range(flood))  # none lost, in order
    assert await pending == {"behind": "the flood"}
    await client.close()


async def test_an_accept_flood_is_refused_beyond_the_backlog(guest: RawGuest) -> None:
    client, session = await _connect(guest)
    flood = guestagent.ACCEPT_BACKLOG + 100
    for i in range(flood):
        session.send(frame({"event": "accept", "stream": 2 * i + 1, "path": "/s"}))
    assert await (await _ping(client, session)) == {"pong": True}
    assert client.refused_streams == 100 and client._accepted.qsize() == guestagent.ACCEPT_BACKLOG
    resets: list[int] = []
    while len(resets) < 100:
        msg = await asyncio.wait_for(session.received.get(), 5)
        if isinstance(msg, protocol.JsonMessage) and msg.obj.get("type") == "reset":
            resets.append(msg.obj["stream"])
    assert resets == [2 * i + 1 for i in range(guestagent.ACCEPT_BACKLOG, flood)]
    # Taken ones make room again.
    event, stream = await client.accepted()
    assert event["stream"] == stream.id == 1
    session.send(frame({"event": "accept", "stream": 2 * flood + 1, "path": "/s"}))
    assert await (await _ping(client, session)) == {"pong": True}
    assert client.refused_streams == 100
    await client.close()


async def test_a_long_answer_is_bounded(guest: RawGuest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guestagent, "MAX_PART_ITEMS", 10)
    client, session = await _connect(guest)
    pending = asyncio.ensure_future(client.request("diff"))
    req = await session.request("diff")
    for _ in range(3):
        session.send(frame({"event": "part", "id": req["id"], "key": "changes",
                            "items": [1, 2, 3, 4]}))
    with pytest.raises(GuestAgentError, match="more than 10 items"):
        await pending
    assert client.connected
    await client.close()


async def _all(events: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e async for e in events]


async def _take(events: AsyncIterator[dict[str, Any]], n: int) -> AsyncIterator[dict[str, Any]]:
    async for e in events:
        yield e
        n -= 1
        if n == 0:
            return


# -- files (roost.hostagent.files): what guest root can send back ----------------

async def test_a_watch_flood_and_bad_changes_are_bounded_and_dropped(
        guest: RawGuest, monkeypatch: pytest.MonkeyPatch) -> None:
    from roost.hostagent import files

    monkeypatch.setattr(files, "WATCH_QUEUE", 100)
    client, session = await _connect(guest)
    started = asyncio.ensure_future(files.watch(client, "/w", False))
    req = await session.request("files-watch")
    session.send(frame({"id": req["id"], "ok": True, "result": {"path": "/w"}}))
    opened = await started
    changes = opened.items
    stream = req["stream"]
    for bad in ({"path": "relative", "kind": "created"}, {"path": 7, "kind": "created"},
                {"path": "/" + "x" * 5000, "kind": "created"},
                {"path": "/a", "kind": "exploded"}, {"path": "/a"}):
        session.send(frame({"event": "files-change", "stream": stream, **bad}))
    session.send(frame({"event": "files-written", "stream": stream, "size": 1}))
    for i in range(5000):  # far more than the host holds for a reader that does not read
        session.send(frame({"event": "files-change", "stream": stream, "path": f"/w/{i}",
                            "kind": "created"}))
    session.send(frame({"id": 10**6, "ok": True, "result": {}}))  # a marker: all read by then
    await session.drain()
    await asyncio.sleep(0.5)
    assert client.rejected >= 6 and client.connected
    got = [await asyncio.wait_for(changes.__anext__(), 5) for _ in range(101)]
    assert got[0] == {"dropped": 4900}  # counted, not queued
    assert [c["path"] for c in got[1:]] == [f"/w/{i}" for i in range(100)]
    await opened.close()
    assert (await session.request("reset"))["stream"] == stream  # the guest's watch ends
    await client.close()


async def test_a_write_the_guest_never_confirms_fails_and_is_reset(
        guest: RawGuest, monkeypatch: pytest.MonkeyPatch) -> None:
    from roost.hostagent import files

    monkeypatch.setattr(files, "WRITE_DONE_TIMEOUT", 0.5)
    client, session = await _connect(guest)

    async def body() -> AsyncIterator[bytes]:
        yield b"data"

    writing = asyncio.ensure_future(files.write(client, "/f", None, body()))
    req = await session.request("files-write")
    session.send(frame({"id": req["id"], "ok": True, "result": {"path": "/f", "mode": 420}}))
    assert (await session.request("eof"))["stream"] == req["stream"]
    # What the guest says instead of confirming is checked, and counts for nothing.
    session.send(frame({"event": "files-written", "stream": req["stream"], "size": "4"}))
    session.send(frame({"event": "files-change", "stream": req["stream"], "path": "/f",
                        "kind": "created"}))
    with pytest.raises(GuestAgentError, match="did not confirm the write"):
        await writing
    assert (await session.request("reset"))["stream"] == req["stream"]
    assert client.rejected == 2 and client.connected
    await client.close()


async def test_a_read_that_overruns_its_window_is_reset(guest: RawGuest) -> None:
    from roost.hostagent import files

    client, session = await _connect(guest)
    started = asyncio.ensure_future(files.read(client, "/big"))
    req = await session.request("files-read")
    session.send(frame({"id": req["id"], "ok": True, "result": {"size": 1, "mode": 420}}))
    opened = await started
    chunk = b"x" * protocol.DATA_CHUNK
    for _ in range(protocol.WINDOW // len(chunk) + 2):  # more than the credit it was given
        session.send(protocol.encode_data(req["stream"], chunk))
    reset = await session.request("reset")
    assert reset["stream"] == req["stream"] and "overrun" in reset["error"]
    with pytest.raises(guestagent.StreamReset):
        async for _ in opened.items:
            pass
    await opened.close()
    assert client.connected
    await client.close()


async def test_a_read_answer_that_would_forge_headers_is_refused(guest: RawGuest) -> None:
    from roost.hostagent import files

    client, session = await _connect(guest)
    started = asyncio.ensure_future(files.read(client, "/f"))
    req = await session.request("files-read")
    session.send(frame({"id": req["id"], "ok": True,
                        "result": {"size": "1\r\nX-Evil: 1", "mode": 420}}))
    with pytest.raises(GuestAgentError, match="size must be a non-negative integer"):
        await started
    assert (await session.request("reset"))["stream"] == req["stream"]
    await client.close()


async def test_a_write_the_guest_fails_midway_stops_at_once(guest: RawGuest) -> None:
    """The guest's disk fills after the first chunk: the host stops sending
    (no wait for credit that never comes) and says why."""
    from roost.hostagent import files

    client, session = await _connect(guest)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(64):  # 8 MiB: far past the credit the guest granted
            yield b"x" * (128 * 1024)

    writing = asyncio.ensure_future(files.write(client, "/f", None, body()))
    req = await session.request("files-write")
    session.send(frame({"id": req["id"], "ok": True, "result": {"path": "/f", "mode": 420}}))
    session.send(frame({"event": "files-written", "stream": req["stream"],
                        "error": "/f: No space left on device (ENOSPC)"}))
    with pytest.raises(GuestAgentError, match="ENOSPC"):
        await asyncio.wait_for(writing, 10)
    assert client.connected
    await client.close()
