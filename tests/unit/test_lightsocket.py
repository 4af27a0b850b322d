"""lightsocket (the guest agent's `socket` without its enums) behaves as
`socket` does where the agent uses it."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from roost_guest import lightsocket


def test_accept_gives_a_socket_that_is_a_context_manager(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with lightsocket.socket(lightsocket.AF_UNIX, lightsocket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(5)  # not passed on to the accepted socket
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(path)
        conn, _ = listener.accept()
        with conn:
            assert isinstance(conn, lightsocket.socket)
            assert conn.gettimeout() is None
            assert not os.get_inheritable(conn.fileno())
            client.sendall(b"ping")
            assert conn.recv(4) == b"ping"
            conn.shutdown(lightsocket.SHUT_WR)
            assert client.recv(1) == b""
        assert conn.fileno() == -1
    assert listener.fileno() == -1
    client.close()


def test_socketpair_is_two_connected_sockets() -> None:
    a, b = lightsocket.socketpair()
    with a, b:
        assert isinstance(a, lightsocket.socket) and a.family == socket.AF_UNIX
        assert not os.get_inheritable(a.fileno()) and not os.get_inheritable(b.fileno())
        a.sendall(b"x" * 100_000)
        got = b""
        threading.Thread(target=a.close).start()
        while chunk := b.recv(65536):
            got += chunk
        assert got == b"x" * 100_000


def test_create_connection_connects_or_says_why() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with lightsocket.create_connection(("127.0.0.1", port), 5) as sock:
            peer, _ = server.accept()
            with peer:
                sock.sendall(b"hi")
                assert peer.recv(2) == b"hi"
    with pytest.raises(ConnectionRefusedError):
        lightsocket.create_connection(("127.0.0.1", port), 5)
    with pytest.raises(lightsocket.gaierror):
        lightsocket.create_connection(("no-such-host.invalid", 1), 5)


def test_its_constants_are_the_socket_modules() -> None:
    for name in lightsocket.__all__:
        if name.isupper() and hasattr(socket, name):
            assert getattr(lightsocket, name) == getattr(socket, name), name
    assert lightsocket.gethostname() == socket.gethostname()
    assert lightsocket.inet_ntop(socket.AF_INET6, bytes(15) + b"\1") == "::1"
    fds_before = len(os.listdir("/proc/self/fd"))
    lightsocket.socket(lightsocket.AF_INET, lightsocket.SOCK_DGRAM).close()
    assert len(os.listdir("/proc/self/fd")) == fds_before
