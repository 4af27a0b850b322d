"""A guest agent killed and started again (as systemd or roost's init respawn
it) is noticed by the host agent, which opens a new session and subscribes
to its events again within 2 s: new guest ports are forwarded again.

The real guest agent runs on the host, behind a virtio-serial stand-in
(tests/unit/virtio_port.py: the host stays connected across the restart,
so only the guest agent's epoch can tell) or on a Unix socket (the restart
closes the connection); the host side is the host agent's own session and
port forwarding.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roost.config.model import PortForward
from roost.driver.channel import UnixDialer
from roost.hostagent.cleanup import CleanupStack
from roost.hostagent.events import EventEmitter
from roost.hostagent.portfwd.orchestrator import PortForwarding
from roost.hostagent.session import GuestAgentSession
from roost.store.instance import Instance
from tests.unit.virtio_port import VirtioPort

RESUBSCRIBED_WITHIN = 2.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while data := await r.read(65536):
        w.write(data)
        await w.drain()
    w.close()


async def _echo_server(port: int = 0) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", port)
    return server, server.sockets[0].getsockname()[1]


async def _echoes(port: int) -> bool:
    """Whether host port `port` leads to an echo server (through the guest agent)."""
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        w.write(b"ping")
        await w.drain()
        return await asyncio.wait_for(r.read(4), 2) == b"ping"
    except (OSError, TimeoutError):
        return False
    finally:
        w.close()


async def _wait_echoes(port: int, within: float) -> float:
    start = time.monotonic()
    while not await _echoes(port):
        assert time.monotonic() - start < within, f"host port {port} is not forwarded"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


class GuestAgent:
    """The guest agent as a process of its own, started again at will."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        self.proc = subprocess.Popen([sys.executable, "-m", "roost_guest", *self.args], env=env)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture(params=["virtio-serial", "unix"])
async def transport(request: pytest.FixtureRequest, tmp_path: Path
                    ) -> AsyncIterator[tuple[GuestAgent, str]]:
    """(the guest agent, not started; the Unix socket the host dials)."""
    if request.param == "unix":
        path = str(tmp_path / "ga.sock")
        yield GuestAgent(["--unix", path]), path
        return
    port = VirtioPort(str(tmp_path / "ga.sock"))
    await port.start()
    try:
        yield GuestAgent(["--port", port.device]), port.socket_path
    finally:
        await port.close()


async def test_a_restarted_guest_agent_is_resubscribed(
        transport: tuple[GuestAgent, str], tmp_path: Path) -> None:
    agent, host_socket = transport
    before, before_port = await _echo_server()
    after, after_port = await _echo_server()
    host_before, host_after = _free_port(), _free_port()
    rules = [PortForward(guest_port=before_port, host_port=host_before, proto="tcp"),
             PortForward(guest_port=after_port, host_port=host_after, proto="tcp"),
             # This "guest" is the host: leave all its other listeners alone.
             PortForward(guest_ip="0.0.0.0", guest_port_range=(1, 65535), ignore=True)]
    after.close()  # listening again only once the guest agent has restarted
    await after.wait_closed()
    events = EventEmitter(io.StringIO())
    session = GuestAgentSession(UnixDialer(host_socket), events, instance="t",
                                allow_exec=False, changed=lambda: None)
    forwarding = PortForwarding(Instance("t", tmp_path), rules, session, events, lambda: None)
    cleanups = CleanupStack()
    agent.start()
    try:
        while not os.path.exists(host_socket):
            await asyncio.sleep(0.02)
        await forwarding.start(cleanups)
        await _wait_echoes(host_before, 10)
        first = session.client
        assert first is not None and first.epoch is not None

        agent.kill()
        agent.start()
        restarted = time.monotonic()
        after, _ = await _echo_server(after_port)
        took = await _wait_echoes(host_after, RESUBSCRIBED_WITHIN)
        print(f"re-subscribed {time.monotonic() - restarted:.3f}s after the restart")
        assert time.monotonic() - restarted < RESUBSCRIBED_WITHIN, took
        client = session.client
        assert client is not None and client is not first and client.epoch != first.epoch
        assert first.error is not None
        # The forward from before the restart serves again too.
        await _wait_echoes(host_before, RESUBSCRIBED_WITHIN)
    finally:
        await cleanups.run()
        await session.drop()
        agent.kill()
        before.close()
        after.close()

