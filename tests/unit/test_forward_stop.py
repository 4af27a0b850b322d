"""A TCP forward stopped while a connection's tunnel is still being opened
closes that connection (it once kept its socket open for good: the host
agent lost one fd per such connection). The real guest agent, on a Unix
socket, opens the tunnel; its target is a listener whose accept queue is
full, so the guest agent's connect() hangs for a while."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from roost.driver.channel import UnixDialer
from roost.hostagent.guestagent import GuestAgentClient
from roost.hostagent.portfwd.forward import TCPForward
from tests.unit.guest_agent_process import guest_agent_on


@pytest.fixture(scope="module")
def agent_sock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = str(tmp_path_factory.mktemp("ga") / "ga.sock")
    with guest_agent_on(path):
        yield path


def full_listener() -> tuple[socket.socket, list[socket.socket]]:
    """A listener that accepts nothing and whose accept queue is full: a
    further connect() waits (its SYNs are dropped) instead of completing."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(2):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(listener.getsockname())
        fillers.append(s)
    return listener, fillers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_stop_closes_a_connection_whose_tunnel_is_opening(agent_sock: str) -> None:
    client = GuestAgentClient(UnixDialer(agent_sock))
    await client.connect()
    listener, fillers = full_listener()

    async def opener() -> GuestAgentClient:
        return client

    port = free_port()
    forward = TCPForward(opener, "127.0.0.1", port, "127.0.0.1", listener.getsockname()[1])
    await forward.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.5)  # the tunnel request is in flight: connect() hangs
        assert not reader.at_eof()
        await forward.stop()
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed, not left open
        writer.close()
    finally:
        await forward.stop()
        await client.close()
        for s in [listener, *fillers]:
            s.close()
