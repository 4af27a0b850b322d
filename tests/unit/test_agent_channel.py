"""The real guest agent (run on the host over its Unix socket) and the host
client: sessions, port events, tunnels with flow control."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from roost.driver.channel import UnixDialer
from roost.hostagent.guestagent import GuestAgentClient, GuestAgentError, StreamReset
from tests.unit.guest_agent_process import guest_agent_on


@pytest.fixture(scope="module")
def agent_sock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = str(tmp_path_factory.mktemp("ga") / "ga.sock")
    with guest_agent_on(path):
        yield path


@pytest.fixture
async def client(agent_sock: str) -> AsyncIterator[GuestAgentClient]:
    c = GuestAgentClient(UnixDialer(agent_sock))
    await c.connect()
    yield c
    await c.close()


async def test_ping_info_and_unknown_request(client: GuestAgentClient) -> None:
    assert await client.request("ping") == {"pong": True}
    info = await client.request("info")
    assert info["pid"] > 0 and isinstance(info["ports"], list)
    with pytest.raises(GuestAgentError, match="unknown request type"):
        await client.request("fly")


async def test_sync_skips_stale_bytes(agent_sock: str) -> None:
    # A second session on the same agent works, and garbage sent by a
    # previous session does not confuse the next one.
    r, w = await asyncio.open_unix_connection(agent_sock)
    w.write(b"\x00\x00\x00\x05Jnope")
    await w.drain()
    assert await r.read(100)  # the agent answers with an error and closes
    c = GuestAgentClient(UnixDialer(agent_sock))
    await c.connect()
    assert await c.request("ping") == {"pong": True}
    await c.close()


def _listen(proto: str, host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.bind((host, 0))
    if proto == "tcp":
        s.listen(128)
    return s


async def _next_ports_event(client: GuestAgentClient, timeout: float) -> dict[str, object]:
    async for event in client.events():
        if event.get("event") == "ports":
            return event
    raise AssertionError("event stream ended")


async def test_port_events_follow_listeners(client: GuestAgentClient) -> None:
    await client.request("events")
    for proto, host in (("tcp", "127.0.0.1"), ("udp", "127.0.0.1"), ("tcp", "::1")):
        sock = _listen(proto, host)
        port = sock.getsockname()[1]
        start = time.monotonic()
        want = {"proto": proto, "ip": host, "port": port}
        while True:
            event = await asyncio.wait_for(_next_ports_event(client, 2), 2)
            if want in event["added"]:  # type: ignore[operator]
                break
        assert time.monotonic() - start < 0.25 + 0.1
        sock.close()
        while True:
            event = await asyncio.wait_for(_next_ports_event(client, 2), 2)
            if want in event["removed"]:  # type: ignore[operator]
                break


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_tcp_tunnel_round_trip_and_eof(client: GuestAgentClient) -> None:
    server, port = await _echo_server()
    stream = await client.open_stream("tcp", host="127.0.0.1", port=port)
    await stream.send(b"hello")
    assert await stream.recv() == b"hello"
    await stream.ack(5)
    await stream.send_eof()
    assert await stream.recv() is None
    server.close()


async def test_an_optimistic_tunnel_carries_what_was_sent_before_its_answer(
        client: GuestAgentClient) -> None:
    """The forwards' open: data follows the request without waiting for the
    answer; the guest queues it until its connect is made."""
    server, port = await _echo_server()
    stream = await client.open_stream("tcp", host="127.0.0.1", port=port, optimistic=True)
    await stream.send(b"early " * 1000)  # before the guest can have answered
    await stream.send_eof()
    got = b""
    while (data := await stream.recv()) is not None:
        got += data
        await stream.ack(len(data))
    assert got == b"early " * 1000
    server.close()


async def test_an_optimistic_tunnel_that_is_refused_is_reset(client: GuestAgentClient) -> None:
    sock = _listen("tcp")
    port = sock.getsockname()[1]
    sock.close()
    stream = await client.open_stream("tcp", host="127.0.0.1", port=port, optimistic=True)
    with pytest.raises(StreamReset, match=r"cannot connect to tcp:127\.0\.0\.1"):
        await asyncio.wait_for(stream.recv(), 10)
    assert await client.request("ping") is not None


async def test_tunnel_to_closed_port_fails_clearly(client: GuestAgentClient) -> None:
    sock = _listen("tcp")
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(GuestAgentError, match=r"cannot connect to tcp:127\.0\.0\.1"):
        await client.open_stream("tcp", host="127.0.0.1", port=port)


async def test_a_tunnel_the_host_gave_up_on_is_not_kept(client: GuestAgentClient) -> None:
    """The host stops waiting for a tunnel whose connect in the guest is slow
    (a TCP listener with a full accept queue drops SYNs: the connect retries
    after 1 s). When the connect completes, the guest closes it instead of
    holding a stream no one reads."""
    listener = _listen("tcp")
    listener.listen(0)
    addr = listener.getsockname()
    fillers = []
    for _ in range(3):  # listen(0) holds one; the others wait in SYN retries
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(addr)
        fillers.append(f)
    filler_ports = {f.getsockname()[1] for f in fillers}
    await asyncio.sleep(0.2)
    try:
        with pytest.raises(GuestAgentError, match="did not answer"):
            await client.open_stream("tcp", host=addr[0], port=addr[1], timeout=0.5)
        listener.settimeout(10)
        while True:  # the fillers' first, as the queue drains; then the guest's
            conn, peer = await asyncio.to_thread(listener.accept)
            if peer[1] not in filler_ports:
                break
            conn.close()
        conn.settimeout(5)
        with contextlib.suppress(ConnectionResetError):  # closed with data unread: as good
            assert await asyncio.to_thread(conn.recv, 1) == b""  # closed, not held
        conn.close()
        assert await client.request("ping") is not None  # the session goes on
    finally:
        for f in fillers:
            f.close()
        listener.close()


async def test_an_answer_behind_stream_data_is_waited_for(client: GuestAgentClient) -> None:
    """A request's timeout is for a guest agent that does not answer, not one
    busy moving stream data (CI: 64 tunnels at full window, their answers late
    behind the data, were given up at 10 s and their connections reset). The
    tunnel's connect in the guest is slow (a full accept queue: SYN retried
    after 1 s) while another stream moves data: its 0.5 s timeout stretches."""
    server, port = await _echo_server()
    busy = await client.open_stream("tcp", host="127.0.0.1", port=port)
    moving = True

    async def keep_moving() -> int:
        moved = 0
        while moving:
            await busy.send(b"b" * 65536)
            got = 0
            while got < 65536:
                data = await busy.recv()
                assert data is not None
                got += len(data)
                await busy.ack(len(data))
            moved += got
        return moved

    mover = asyncio.ensure_future(keep_moving())
    listener = _listen("tcp")
    listener.listen(0)
    addr = listener.getsockname()
    fillers = []
    for _ in range(3):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(addr)
        fillers.append(f)
    accepted: list[socket.socket] = []

    def drain_queue() -> None:
        time.sleep(0.8)  # past the open's own timeout
        listener.settimeout(0.2)
        while moving:  # the fillers', then the guest's
            with contextlib.suppress(TimeoutError):
                accepted.append(listener.accept()[0])

    await asyncio.sleep(0.2)
    draining = asyncio.ensure_future(asyncio.to_thread(drain_queue))
    try:
        start = time.monotonic()
        stream = await client.open_stream("tcp", host=addr[0], port=addr[1], timeout=0.5)
        assert time.monotonic() - start > 0.5
        await stream.reset()
    finally:
        moving = False
        assert await asyncio.wait_for(mover, 10) > 0
        await draining
        for sock in fillers + accepted:
            sock.close()
        listener.close()
        await busy.reset()
        server.close()


async def test_64_concurrent_streams_of_1mib(client: GuestAgentClient) -> None:
    server, port = await _echo_server()
    payload = os.urandom(1 << 20)
    digest = hashlib.sha256(payload).hexdigest()

    async def one() -> str:
        stream = await client.open_stream("tcp", host="127.0.0.1", port=port)
        h = hashlib.sha256()
        received = 0

        async def sender() -> None:
            await stream.send(payload)
            await stream.send_eof()

        task = asyncio.ensure_future(sender())
        while (data := await stream.recv()) is not None:
            h.update(data)
            received += len(data)
            await stream.ack(len(data))
        await task
        assert received == len(payload)
        return h.hexdigest()

    results = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(64))), 120)
    assert set(results) == {digest}
    server.close()


async def test_slow_reader_does_not_stall_other_streams(client: GuestAgentClient) -> None:
    # A guest-side peer that never reads: its stream stops at the window,
    # and another stream still moves data meanwhile.
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(1)
    stuck_port = stuck.getsockname()[1]
    slow = await client.open_stream("tcp", host="127.0.0.1", port=stuck_port)
    blob = b"x" * (32 << 20)  # more than kernel buffers and the window hold
    sending = asyncio.ensure_future(slow.send(blob))
    await asyncio.sleep(0.5)
    assert not sending.done()  # held by credit, not buffered without bound
    server, port = await _echo_server()
    fast = await client.open_stream("tcp", host="127.0.0.1", port=port)
    await fast.send(b"ping")
    assert await asyncio.wait_for(fast.recv(), 5) == b"ping"
    await slow.reset()
    sending.cancel()
    stuck.close()
    server.close()


async def test_udp_tunnel(client: GuestAgentClient) -> None:
    sock = _listen("udp")
    port = sock.getsockname()[1]
    stream = await client.open_stream("udp", host="127.0.0.1", port=port)
    await stream.send(b"datagram-1")
    data, peer = await asyncio.get_running_loop().run_in_executor(None, sock.recvfrom, 100)
    assert data == b"datagram-1"
    sock.sendto(b"reply", peer)
    assert await asyncio.wait_for(stream.recv(), 5) == b"reply"
    await stream.reset()
    sock.close()


async def test_unix_tunnel(client: GuestAgentClient, tmp_path: Path) -> None:
    path = str(tmp_path / "svc.sock")

    async def greet(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"hi from unix")
        w.close()

    server = await asyncio.start_unix_server(greet, path)
    stream = await client.open_stream("unix", path=path)
    assert await stream.recv() == b"hi from unix"
    server.close()


async def test_reverse_unix_socket(client: GuestAgentClient, tmp_path: Path) -> None:
    # The "guest" listens on a socket; each connection reaches the host as a
    # guest-initiated stream.
    guest_path = str(tmp_path / "guest-side.sock")
    await client.request("listen", path=guest_path)
    loop = asyncio.get_running_loop()

    def guest_client() -> bytes:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(guest_path)
            s.sendall(b"from the guest")
            s.shutdown(socket.SHUT_WR)
            return s.recv(100)

    reply = loop.run_in_executor(None, guest_client)
    event, stream = await asyncio.wait_for(client.accepted(), 5)
    assert event["path"] == guest_path and stream.id % 2 == 1
    assert await stream.recv() == b"from the guest"
    await stream.send(b"host answers")
    await stream.send_eof()
    assert await asyncio.wait_for(reply, 5) == b"host answers"


async def test_hybrid_vsock_handshake_dialer(agent_sock: str, tmp_path: Path) -> None:
    # A stand-in for Firecracker's vsock Unix socket: answers CONNECT 52
    # with OK, then relays to the agent.
    from roost.driver.channel import HybridVsockDialer

    async def vmm(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        assert await r.readline() == b"CONNECT 52\n"
        w.write(b"OK 1073741824\n")
        ar, aw = await asyncio.open_unix_connection(agent_sock)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(r, aw), pipe(ar, w), return_exceptions=True)

    path = str(tmp_path / "vsock.sock")
    server = await asyncio.start_unix_server(vmm, path)
    c = GuestAgentClient(HybridVsockDialer(path))
    await c.connect()
    assert await c.request("ping") == {"pong": True}
    await c.close()
    server.close()


async def test_worker_status_turns_busy_and_idle(tmp_path: Path) -> None:
    # A threshold above what the rest of this machine (maybe running VMs)
    # keeps runnable, and more CPU burners than cores to cross it.
    path = str(tmp_path / "ga-worker.sock")
    agent = subprocess.Popen([sys.executable, "-m", "roost_guest", "--unix", path,
                              "--busy-threshold", "3.5", "--sample-secs", "0.1"])
    burners: list[subprocess.Popen[bytes]] = []
    try:
        while not os.path.exists(path):
            await asyncio.sleep(0.02)
        c = GuestAgentClient(UnixDialer(path))
        await c.connect()
        status = await c.request("status")
        assert status["threshold"] == 3.5 and status["sampleSecs"] == 0.1
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                   for _ in range(6)]
        deadline = time.monotonic() + 10
        while (await c.request("status"))["state"] != "busy":
            assert time.monotonic() < deadline, "never busy"
            await asyncio.sleep(0.1)
        for b in burners:
            b.kill()
            b.wait()
        deadline = time.monotonic() + 10
        while (status := await c.request("status"))["state"] != "idle":
            assert time.monotonic() < deadline, "never idle again"
            await asyncio.sleep(0.1)
        assert status["lastBusyAt"] is not None
        await c.close()
    finally:
        for b in burners:
            b.kill()
            b.wait()
        agent.terminate()
        agent.wait(5)


async def test_health_checks_and_probes(tmp_path: Path) -> None:
    integrations, probes = tmp_path / "integrations.d", tmp_path / "probes.d"
    integrations.mkdir()
    probes.mkdir()
    flag = tmp_path / "ready"
    (integrations / "web.json").write_text(json.dumps({
        "name": "web", "health_cmd": f"test -e {flag}", "health_interval_secs": 0.2,
        "health_timeout_secs": 2, "startup_grace_secs": 30}))
    (integrations / "slow.json").write_text(json.dumps({
        "name": "slow", "health_cmd": ["sleep", "30"], "health_interval_secs": 0.2,
        "health_timeout_secs": 0.3}))
    (integrations / "bad.json").write_text("{not json")
    (probes / "disk.json").write_text(json.dumps({
        "name": "disk", "cmd": "echo '{\"free\": 42}'", "interval_secs": 0.2,
        "output_format": "json"}))
    path = str(tmp_path / "ga.sock")
    proc = subprocess.Popen([sys.executable, "-m", "roost_guest", "--unix", path,
                             "--integrations-dir", str(integrations),
                             "--probes-dir", str(probes)])
    try:
        while not os.path.exists(path):
            await asyncio.sleep(0.02)
        c = GuestAgentClient(UnixDialer(path))
        await c.connect()
        await c.request("events")

        async def check(name: str) -> dict[str, Any]:
            result = await c.request("health")
            return next(x for x in result["checks"] if x["name"] == name)

        deadline = time.monotonic() + 10
        while (await check("web"))["detail"] == "":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert (await check("web"))["status"] == "starting"  # failing, within grace
        flag.touch()
        while (await check("web"))["status"] != "healthy":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        while (await check("slow"))["status"] != "error":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert "timed out after 0.3s" in (await check("slow"))["detail"]
        health = await c.request("health")
        assert health["errors"][0]["file"].endswith("bad.json")
        assert health["summary"] == "error"
        result = await c.request("probes")
        while not result["probes"][0].get("ok"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
            result = await c.request("probes")
        assert result["probes"][0]["output"] == {"free": 42}
        # Changes were pushed as events, not only polled.
        kinds = set()
        while not c._events.empty():
            kinds.add(c._events.get_nowait()["event"])  # type: ignore[index]
        assert "health" in kinds
        await c.close()
    finally:
        proc.terminate()
        proc.wait(5)



async def test_more_listeners_than_fit_a_frame(client: GuestAgentClient) -> None:
    # 6000 listeners are some 300 KB of JSON, over a frame's 256 KiB: the
    # subscription and info still give them all (in parts), and the session
    # goes on; in one reply they would fail every reconnect of the host.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    count = 6000
    if hard != resource.RLIM_INFINITY and hard < count + 1000:
        pytest.fail(f"this test needs {count + 1000} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, count + 1000), hard))
    socks = [_listen("tcp") for _ in range(count)]
    try:
        want = {("tcp", "127.0.0.1", s.getsockname()[1]) for s in socks}
        for kind in ("info", "events"):  # the first waits for the agent's next scan
            deadline = time.monotonic() + 10
            while True:
                ports = (await client.request(kind, timeout=30))["ports"]
                missing = want - {(p["proto"], p["ip"], p["port"]) for p in ports}
                if not missing or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert not missing, f"{kind}: {len(missing)} of {count} listeners missing"
        assert await client.request("ping") == {"pong": True}
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
