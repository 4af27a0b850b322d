"""The guest agent's vsock port, which answers the host only.

Every vsock peer has a context id: the host is CID 2 (VMADDR_CID_HOST,
also what Firecracker and Cloud Hypervisor give connections from their
hybrid-vsock socket), a process in this guest over vsock loopback is CID 1,
and another guest on the same host is CID 3 or above. Only the host may
reach the agent, which can mount, tunnel and (when allowed) run commands.
"""

from __future__ import annotations

from roost_guest import lightsocket as socket

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional, Set

VMADDR_CID_HOST = 2


def peer_is_host(peer: Any) -> bool:
    """Whether accept()'s address of a vsock peer, (cid, port), is the host."""
    return (isinstance(peer, tuple) and len(peer) == 2 and type(peer[0]) is int
            and peer[0] == VMADDR_CID_HOST)


def listener(port: int, log: Callable[[str], None]) -> Optional[socket.socket]:
    """A vsock socket listening on `port` on every CID, or None where the
    guest has no vsock."""
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        return None
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind((socket.VMADDR_CID_ANY, port))
        sock.listen(16)
        return sock
    except OSError as e:
        log("vsock port %d unavailable: %s" % (port, e))
        return None


class HostOnly:
    """The admission check of the vsock listener: refuses every peer but the
    host, logging each refused CID once (a peer may retry in a loop)."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self._log = log
        self._logged: Set[Any] = set()

    def __call__(self, peer: Any) -> bool:
        if peer_is_host(peer):
            return True
        cid = peer[0] if isinstance(peer, tuple) and peer else peer
        if cid not in self._logged:
            self._logged.add(cid)
            self._log("vsock: refused a connection from CID %r: only the host (CID %d) "
                      "is served" % (cid, VMADDR_CID_HOST))
        return False
