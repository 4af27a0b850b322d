"""What the guest agent's start-up uses of `socket`, without importing it.

`socket` turns every AF_*, SOCK_*, MSG_* and AddressInfo constant into an
IntEnum when it loads, and imports enum and selectors for that: under TCG
a tenth of a second or more of every boot before the guest agent answers.
The C module `_socket` has the same sockets and constants. Its socket
lacks only what `socket.socket` adds in Python: accept() returning a
socket, the context manager, socketpair() and create_connection(); those
are here, as the standard library writes them (sockets are made
non-inheritable by `_socket` itself). Modules loaded later (execute,
files, mounts) use `socket` as usual: the two kinds of socket mix freely.

Standard library only: runs in the guest.
"""

from __future__ import annotations

import _socket
from _socket import (
    AF_INET,
    AF_INET6,
    AF_NETLINK,
    AF_UNIX,
    IPPROTO_TCP,
    IPPROTO_UDP,
    SHUT_RDWR,
    SHUT_WR,
    SO_REUSEADDR,
    SOCK_DGRAM,
    SOCK_RAW,
    SOCK_STREAM,
    SOL_SOCKET,
    TCP_NODELAY,
    gaierror,
    gethostname,
    inet_ntoa,
    inet_ntop,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional, Tuple

__all__ = ["AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX", "AF_VSOCK", "IPPROTO_TCP",
           "IPPROTO_UDP", "SHUT_RDWR", "SHUT_WR", "SOCK_DGRAM", "SOCK_RAW", "SOCK_STREAM",
           "SOL_SOCKET", "SO_REUSEADDR", "TCP_NODELAY", "VMADDR_CID_ANY", "create_connection",
           "gaierror", "gethostname", "inet_ntoa", "inet_ntop", "socket", "socketpair"]

AF_VSOCK = getattr(_socket, "AF_VSOCK", None)
VMADDR_CID_ANY = getattr(_socket, "VMADDR_CID_ANY", 0xFFFFFFFF)


class _Socket(_socket.socket):
    __slots__ = ("__weakref__",)

    def __enter__(self) -> _Socket:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    def accept(self) -> Tuple[_Socket, Any]:
        fd, addr = self._accept()  # type: ignore[attr-defined]  # (not in typeshed)
        sock = _Socket(self.family, self.type, self.proto, fileno=fd)
        # As socket.accept: a listener with a timeout does not pass it on.
        if _socket.getdefaulttimeout() is None and self.gettimeout():
            sock.setblocking(True)
        return sock, addr


if TYPE_CHECKING:
    # To the type checker these are the standard library's: the same methods,
    # and the agent's code takes either kind.
    from socket import socket
else:
    socket = _Socket


def socketpair(family: int = AF_UNIX, type: int = SOCK_STREAM, proto: int = 0
               ) -> Tuple[socket, socket]:
    a, b = _socket.socketpair(family, type, proto)
    return (socket(family, type, proto, a.detach()), socket(family, type, proto, b.detach()))


def create_connection(address: Tuple[str, int], timeout: Optional[float] = None) -> socket:
    """Connect to the first of `address`'s addresses that answers."""
    host, port = address
    error: Optional[OSError] = None
    for family, kind, proto, _, addr in _socket.getaddrinfo(host, port, 0, SOCK_STREAM):
        sock = socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(addr)
            return sock
        except OSError as e:
            sock.close()
            error = e
    raise error or OSError("getaddrinfo returned nothing for %s" % host)
