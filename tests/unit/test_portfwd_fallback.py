"""The port forwarder across the guest agent's absence: forwards made by the
fallback (SSH) while it was away move back to the agent when it returns, and
what failed over SSH the agent tries again. The fallback here is a plain
listener on the host port, as `ssh -L` makes one; the agent forwards are the
real ones (their tunnels are never opened: no connection is made)."""

from __future__ import annotations

import asyncio
import errno
import socket

from roost.hostagent.guestagent import GuestAgentClient, GuestAgentError
from roost.hostagent.portfwd.forward import Forward
from roost.hostagent.portfwd.manager import PortForwarder
from roost.hostagent.portfwd.rules import HostAddr, HostSocket, Listener


class ListenerForward(Forward):
    """Holds the host port, as an SSH forward does; or fails as one taken does."""

    def __init__(self, port: int, fail: bool) -> None:
        self.port, self.fail = port, fail
        self.sock: socket.socket | None = None
        self.description = f"fallback 127.0.0.1:{port}"

    async def start(self) -> None:
        if self.fail:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen()

    async def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()


async def no_agent() -> GuestAgentClient:
    raise GuestAgentError("no guest agent in this test")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_forwards_move_back_to_the_agent_when_it_returns() -> None:
    async def scenario() -> None:
        events: list[dict[str, object]] = []
        forwarder = PortForwarder([], no_agent, events.append)
        ports = free_ports(3)
        listeners = [Listener("tcp", "127.0.0.1", p) for p in ports]
        made: list[ListenerForward] = []

        def fallback(host: HostAddr | HostSocket, guest_host: str,
                     guest_port: int) -> Forward:
            assert isinstance(host, HostAddr)
            made.append(ListenerForward(host.port, fail=host.port == ports[2]))
            return made[-1]

        forwarder.fallback = fallback
        await forwarder.sync(listeners)
        assert [f["via"] for f in forwarder.active()] == ["ssh", "ssh"]
        assert [(f["guestAddr"], f["via"]) for f in forwarder.failed()] == [
            (f"127.0.0.1:{ports[2]}", "ssh")]
        assert all(listening(p) for p in ports[:2])

        forwarder.fallback = None  # the guest agent is back
        await forwarder.sync(listeners)
        active = forwarder.active()
        assert sorted(int(f["hostAddr"].rsplit(":", 1)[1]) for f in active) == sorted(ports)
        assert {f["via"] for f in active} == {"agent"}
        assert forwarder.failed() == []
        assert all(m.sock is None or m.sock.fileno() == -1 for m in made), "SSH forwards left"
        assert all(listening(p) for p in ports)
        kinds = [e["type"] for e in events]
        assert kinds.count("stopping") == 2 and kinds.count("forwarding") == 5

        await forwarder.close()
        assert not any(listening(p) for p in ports)

    asyncio.run(scenario())
