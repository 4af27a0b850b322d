"""The guest agent's vsock port answers the host (CID 2) only.

This machine has no vsock peer to connect from (it is a vsock guest
itself, with no vsock loopback and no /dev/vhost-vsock), so the check is
tested on accept()'s (cid, port) addresses, and its place in the accept
loop over a real Unix listener.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from roost.driver.channel import UnixDialer
from roost.hostagent.guestagent import GuestAgentClient
from roost_guest import vsock
from roost_guest.agent import Agent, Options, serve_listener, unix_listener
from roost_guest.vsock import HostOnly, peer_is_host


def test_only_the_host_cid_is_the_host() -> None:
    assert peer_is_host((2, 1025))
    assert not peer_is_host((1, 1025))  # a process in this guest (vsock loopback)
    assert not peer_is_host((3, 1025))  # another guest on the same host
    assert not peer_is_host((0xFFFFFFFF, 1025))  # VMADDR_CID_ANY is no peer
    assert not peer_is_host((0, 1025))  # the hypervisor
    assert not peer_is_host(("2", 1025))
    assert not peer_is_host((True, 1025))  # True == 1, but is no CID either
    assert not peer_is_host("")  # an AF_UNIX peer
    assert not peer_is_host((2,))


def test_refusals_are_logged_once_per_cid() -> None:
    logged: list[str] = []
    admit = HostOnly(logged.append)
    assert admit((2, 5000)) and admit((2, 5001))
    assert not admit((3, 5000)) and not admit((3, 5001)) and not admit((4, 5000))
    assert len(logged) == 2 and "CID 3" in logged[0] and "CID 4" in logged[1]
    assert "only the host (CID 2)" in logged[0]


@contextlib.contextmanager
def serving(path: Path, admit: Callable[[Any], bool]) -> Iterator[None]:
    sock = unix_listener(str(path))
    opts = Options()
    opts.integrations_dir = opts.probes_dir = str(path.parent / "none")

    def run() -> None:
        with contextlib.suppress(OSError):  # the listener shut down
            serve_listener(Agent(opts), sock, "test", admit)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        thread.join(5)
        sock.close()


def test_a_refused_peer_is_hung_up_on(tmp_path: Path) -> None:
    path = tmp_path / "ga.sock"
    with serving(path, HostOnly(lambda msg: None)):  # an AF_UNIX peer is no host
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(5)
        client.connect(str(path))
        assert client.recv(1) == b""
        client.close()


async def test_an_admitted_peer_is_served(tmp_path: Path) -> None:
    path = tmp_path / "ga.sock"
    peers: list[Any] = []

    def admit(peer: Any) -> bool:
        peers.append(peer)
        return True

    with serving(path, admit):
        client = GuestAgentClient(UnixDialer(str(path)))
        await client.connect()
        try:
            assert (await client.request("ping")) == {"pong": True}
        finally:
            await client.close()
    assert peers == [""]


@pytest.mark.skipif(not Path("/dev/vsock").exists(), reason="no vsock in this kernel")
def test_listener_listens_on_every_cid() -> None:
    logged: list[str] = []
    sock = vsock.listener(socket.VMADDR_PORT_ANY, logged.append)
    assert sock is not None, logged
    try:
        cid, port = sock.getsockname()
        assert sock.family == socket.AF_VSOCK and cid == socket.VMADDR_CID_ANY
        assert port != socket.VMADDR_PORT_ANY  # the kernel picked one
    finally:
        sock.close()
