"""Both ends of the guest agent protocol fed at least FUZZ_FRAMES generated
and mutated frames each (see frame_mutations), through their real decode
and dispatch: nothing escapes, the session is still served after each
batch, and one that a batch broke is followed by a session that is.

The figures (frames per side, seconds) go to tests/.results/frame_fuzz.json
and to stdout (pytest -s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import struct
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost.driver.channel import UnixDialer
from roost.hostagent.guestagent import GuestAgentClient, GuestAgentError, TunnelStream
from roost.hostagent.guestevents import event_problem
from roost_guest import agent as guest
from roost_guest import protocol
from tests.unit.frame_mutations import Template, data_frame, killer, mutate, templates
from tests.unit.guest_harness import HARMLESS_REQUESTS, MemoryChannel, harmless_agent, hello
from tests.unit.raw_guest import RawGuest, RawSession

FUZZ_FRAMES = int(os.environ.get("ROOST_FUZZ_FRAMES", "100000"))
EXAMPLES = 100
GUEST_BATCH = FUZZ_FRAMES * 105 // 100 // EXAMPLES + 1
# A margin: on the host a batch may end its session before its end (a
# restart epoch, a guest that closes the session), and the rest is not counted.
HOST_BATCH = FUZZ_FRAMES * 14 // 10 // EXAMPLES + 1
KILLER_EVERY = 4  # one batch in this many ends with bytes that break the framing
RESULTS = Path(__file__).resolve().parents[1] / ".results" / "frame_fuzz.json"
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(HealthCheck))


def _record(side: str, frames: int, seconds: float, **more: int) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    try:
        results = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        results = {}
    results[side] = {"frames": frames, "seconds": round(seconds, 2), **more}
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nframes fuzzed into the {side}: {frames} in {seconds:.1f}s {more}")


def _reads(rng: random.Random, wire: bytes) -> list[bytes]:
    """`wire` cut where reads might cut it."""
    out, pos = [], 0
    while pos < len(wire):
        n = rng.choice([1, 7, 64, 1000, 65536, 1 << 20])
        out.append(wire[pos : pos + n])
        pos += n
    return out


# -- the guest agent ----------------------------------------------------------

GUEST_KINDS = [*HARMLESS_REQUESTS, "hello", "window", "eof", "reset", "data", "tunnel",
               "mount", "exec", "fly"]


def _guest_frame(rng: random.Random, t: Template) -> bytes:
    if t.kind == "data":
        return data_frame(rng, rng.choice([2, 4, 1, 2**32 - 1]))
    if t.kind == "hello":
        return mutate(rng, {"type": "hello", "nonce": rng.randrange(2**48)}, t.extra)
    if t.kind in protocol.STREAM_CONTROL:
        obj = {"type": t.kind, "stream": rng.choice([2, 2, 4, 3]), "bytes": rng.randrange(70000)}
        return mutate(rng, obj, t.extra)
    # Requests the harmless agent does not serve (tunnel, mount, exec) are
    # refused as unknown: their frames still go through decode and dispatch.
    return mutate(rng, {"id": rng.randrange(1, 50), "type": t.kind, **t.extra}, t.extra)


class GuestSide:
    """A socket's session (Connection) and the virtio-serial port's sessions
    (PortSessions), fed in turn. `frames` counts what the sessions decoded,
    less the frames of our own (hellos that open a port session, checkpoint
    pings), plus each frame that broke a session's framing."""

    def __init__(self, tmp: str) -> None:
        self.agent = harmless_agent(tmp)
        self.channel = MemoryChannel()
        self.port = guest.PortSessions(self.agent, self.channel)
        self.conn: guest.Connection | None = None
        self.decoded = self.own = self.breaks = self.sessions_ended = self.batches = 0
        self._peers: list[socket.socket] = []

    @property
    def frames(self) -> int:
        return self.decoded - self.own + self.breaks

    def _session(self, virtio: bool) -> guest.Connection:
        if virtio:
            if self.port.conn is None:
                self.own += 1
                self.port.data(hello(1))
            assert self.port.conn is not None
            return self.port.conn
        if self.conn is None:
            self.conn = guest.Connection(self.agent, self.channel, epoch=7)
        # A live host stream (id 2), so that data, window, eof and reset reach one.
        if 2 not in self.conn.streams:
            ours, theirs = socket.socketpair()
            self.conn.add_stream(2, ours).start()
            self._peers.append(theirs)
        return self.conn

    def _feed(self, virtio: bool, wire: bytes, rng: random.Random) -> bool:
        """Feed `wire` in reads; False when the session ended on the way."""
        session = self._session(virtio)
        for chunk in _reads(rng, wire):
            if virtio:
                self.port.data(chunk)
            elif not session.feed(chunk):
                self.conn = None
                break
        if (self.port.conn if virtio else self.conn) is session:
            return True
        self.decoded += session.decoder.frames
        self.sessions_ended += 1
        session.close()
        return False

    def _checkpoint(self, virtio: bool, rng: random.Random, before: bytes = b"") -> None:
        check = 2**52 + self.batches
        self.own += 1
        assert self._feed(virtio, before + protocol.encode_json({"id": check, "type": "ping"}),
                          rng), "content mutations ended the session"
        replies = self.channel.take()
        assert {"id": check, "ok": True, "result": {"pong": True}} in replies
        assert all("ok" in r or "event" in r or "sync" in r or "type" in r for r in replies)

    def batch(self, batch: list[Template], seed: int) -> None:
        rng = random.Random(seed)
        virtio = seed % 2 == 1
        self.batches += 1
        wire = b"".join(_guest_frame(rng, batch[i % len(batch)]) for i in range(GUEST_BATCH))
        self._checkpoint(virtio, rng, wire)
        if seed % KILLER_EVERY == 0:
            assert not self._feed(virtio, killer(rng, wire[:200]), rng), "the framing survived"
            self.breaks += 1
            assert any(r.get("closed") is True for r in self.channel.take())
            self._checkpoint(virtio, rng)  # after garbage, the next session is served

    def close(self) -> None:
        for session in (self.conn, self.port.conn):
            if session is not None:
                self.decoded += session.decoder.frames
                session.close()
        for peer in self._peers:
            peer.close()


def test_the_guest_agent_survives_fuzzed_frames(tmp_path: Path) -> None:
    side = GuestSide(str(tmp_path))
    started = time.monotonic()

    @FUZZ_SETTINGS
    @given(batch=templates(GUEST_KINDS), seed=st.integers(0, 2**32))
    def feed(batch: list[Template], seed: int) -> None:
        side.batch(batch, seed)

    try:
        feed()
    finally:
        side.close()
    seconds = time.monotonic() - started
    _record("guest", side.frames, seconds, sessionsEnded=side.sessions_ended,
            batches=side.batches)
    assert side.frames >= FUZZ_FRAMES


# -- the host agent -----------------------------------------------------------

HOST_KINDS = ["reply", "ports", "health", "worker", "probes", "accept", "part", "exit",
              "started", "window", "eof", "reset", "data", "error", "other"]


def _host_frame(rng: random.Random, t: Template, pending: list[int], streams: list[int]) -> bytes:
    any_id = rng.choice([*pending, *pending, 0, 99_999, 2**53])
    stream = rng.choice([*streams, 1, 2, 2**32 - 1]) if streams else rng.choice([1, 2, 3])
    listener = {"proto": rng.choice(["tcp", "udp"]), "ip": rng.choice(["127.0.0.1", "::"]),
                "port": rng.randrange(65536)}
    objects: dict[str, dict[str, Any]] = {
        "reply": {"id": any_id, "ok": rng.random() < 0.5, "result": t.extra, "error": "no"},
        "ports": {"event": "ports", "added": [listener], "removed": [listener]},
        "health": {"event": "health", "summary": "healthy", "checks": [t.extra]},
        "worker": {"event": "worker", "state": "idle", "lastBusyAt": None},
        "probes": {"event": "probes", "probes": [t.extra]},
        "accept": {"event": "accept", "stream": rng.randrange(1, 2000, 2), "path": "/x"},
        "part": {"event": "part", "id": any_id, "items": [t.extra]},
        "exit": {"event": "exit", "stream": stream, "exitCode": rng.randrange(256)},
        "started": {"event": "started", "epoch": 42},  # the session's own: no restart
        "window": {"type": "window", "stream": stream, "bytes": rng.randrange(70000)},
        "eof": {"type": "eof", "stream": stream},
        "reset": {"type": "reset", "stream": stream, "error": "x"},
        "error": {"ok": False, "error": "refused"},
        "other": t.extra,
    }
    if t.kind == "data":
        return data_frame(rng, stream)
    return mutate(rng, objects[t.kind], t.extra)


class HostSide:
    """The host agent's client on a socket whose far end is a raw, hostile
    guest. `frames` counts what the client's sessions decoded, less the
    checkpoint replies, plus each frame that broke a session's framing."""

    ENDINGS = ("broken frame", "restarted", "closed the session", "connection to the guest")

    def __init__(self, path: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.guest = RawGuest(path, epoch=42)
        self.loop.run_until_complete(self.guest.start())
        self.decoded = self.own = self.breaks = self.sessions_ended = self.batches = 0
        self.client: GuestAgentClient | None = None
        self.session: RawSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def frames(self) -> int:
        return self.decoded - self.own + self.breaks

    async def _connect(self) -> tuple[GuestAgentClient, RawSession]:
        if self.client is not None and self.client.connected:
            assert self.session is not None
            return self.client, self.session
        if self.client is not None:
            await self._retire()
        client = GuestAgentClient(UnixDialer(self.guest.path))
        await client.connect()
        self.client, self.session = client, await self.guest.session()
        self._tasks = [asyncio.ensure_future(self._consume_events(client)),
                       asyncio.ensure_future(self._consume_streams(client))]
        return client, self.session

    async def _consume_events(self, client: GuestAgentClient) -> None:
        async for event in client.events():
            assert event_problem(event["event"], event) == "", event  # none malformed get here

    async def _consume_streams(self, client: GuestAgentClient) -> None:
        held: list[TunnelStream] = []  # taken, not read: their data stops at the window
        while True:
            _, stream = await client.accepted()
            held.append(stream)
            if len(held) > 50:
                await held.pop(0).reset()

    async def _retire(self) -> None:
        client, session = self.client, self.session
        assert client is not None and session is not None
        task = client._reader_task
        assert task is not None and task.done() and task.exception() is None, "reader died"
        assert client.error is not None and any(e in client.error for e in self.ENDINGS), \
            client.error
        self.decoded += client.frames
        self.sessions_ended += 1
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await client.close()
        session.close()
        self.client = self.session = None

    async def _checkpoint(self, client: GuestAgentClient, session: RawSession,
                          then: bytes) -> dict[str, Any]:
        """A ping answered after `then`: once the reader got past all of it."""
        self.own += 1
        ping = asyncio.ensure_future(client.request("ping", timeout=30))
        try:
            req = await session.request("ping", timeout=30)
            session.send(then + protocol.encode_json({"id": req["id"], "ok": True,
                                                      "result": {"pong": True}}))
            await session.drain()
        except ConnectionError:  # the batch ended the session: the ping says how
            pass
        return await ping

    async def batch(self, batch: list[Template], seed: int) -> None:
        rng = random.Random(seed)
        client, session = await self._connect()
        # Requests for the fuzz's replies to answer (or not).
        targets = [asyncio.ensure_future(client.request("status", timeout=30))
                   for _ in range(3)]
        await asyncio.sleep(0)
        pending = sorted(client._pending)
        streams = sorted(k for k in client._streams if k % 2)
        wire = b"".join(_host_frame(rng, batch[i % len(batch)], pending, streams)
                        for i in range(HOST_BATCH))
        self.batches += 1
        try:
            # A fuzzed reply may have answered this ping first (its id is
            # guessable): what counts is that the reader got past the batch.
            await self._checkpoint(client, session, wire)
        except GuestAgentError:
            pass
        finally:
            for t in targets:
                t.cancel()
            await asyncio.gather(*targets, return_exceptions=True)
        if client.connected:
            assert await self._checkpoint(client, session, b"") == {"pong": True}
        if client.connected and seed % KILLER_EVERY == 0:
            session.send(killer(rng, protocol.encode_json({"event": "worker"})))
            await asyncio.wait_for(client.closed.wait(), 30)
            self.breaks += 1
        if not client.connected:
            await self._retire()
            client, session = await self._connect()  # after garbage, the next session
            assert await self._checkpoint(client, session, b"") == {"pong": True}

    def close(self) -> None:
        async def finish() -> None:
            if self.client is not None:
                self.decoded += self.client.frames
                for t in self._tasks:
                    t.cancel()
                await self.client.close()
            await self.guest.close()

        self.loop.run_until_complete(finish())
        self.loop.close()


def test_the_host_agent_survives_fuzzed_frames(tmp_path: Path) -> None:
    side = HostSide(str(tmp_path / "ga.sock"))
    started = time.monotonic()

    @FUZZ_SETTINGS
    @given(batch=templates(HOST_KINDS), seed=st.integers(0, 2**32))
    def feed(batch: list[Template], seed: int) -> None:
        side.loop.run_until_complete(asyncio.wait_for(side.batch(batch, seed), 60))

    try:
        feed()
    finally:
        with contextlib.suppress(Exception):
            side.close()
    seconds = time.monotonic() - started
    _record("host", side.frames, seconds, sessionsEnded=side.sessions_ended,
            batches=side.batches)
    assert side.frames >= FUZZ_FRAMES


def test_the_frames_are_what_they_say() -> None:
    # The mutations' own contract: content mutations keep the length right.
    rng = random.Random(1)
    for _ in range(2000):
        wire = mutate(rng, {"id": 1, "type": "ping", "x": [1, {"y": "z"}]}, {"k": None})
        (length,) = struct.unpack(">I", wire[:4])
        assert length == len(wire) - 4 and 0 < length <= protocol.MAX_FRAME
