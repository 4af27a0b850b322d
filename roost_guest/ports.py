"""Listening sockets in the guest: TCP listeners and unconnected UDP sockets.

Read with netlink sock_diag (inet_diag) dumps, which cost one syscall per
family and protocol; when the kernel has no sock_diag (module missing), fall
back to parsing /proc/net/{tcp,tcp6,udp,udp6}.

Standard library only: runs in the guest.
"""

from __future__ import annotations

import os
import struct

from roost_guest import lightsocket as socket

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Tuple

    # (proto, ip, port); ip in its canonical text form ("0.0.0.0", "::1").
    Listener = Tuple[str, str, int]

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_LISTEN = 10
TCP_CLOSE = 7  # an unconnected UDP socket

_NLMSGHDR = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid:
# sport, dport (big-endian), src[16], dst[16], if, cookie[2].
_REQ = struct.Struct("=BBBxI")
_SOCKID = struct.Struct(">HH16s16s")
_SOCKID_TAIL = struct.Struct("=III")
# inet_diag_msg: family, state, timer, retrans, then the sockid.
_MSG_HEAD = struct.Struct("=BBBB")


def _ip_text(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw[:16])


def _dump(nl: socket.socket, family: int, proto: int, states: int) -> List[Tuple[str, int]]:
    req = (_REQ.pack(family, proto, 0, states) + _SOCKID.pack(0, 0, b"", b"")
           + _SOCKID_TAIL.pack(0, 0xFFFFFFFF, 0xFFFFFFFF))
    nl.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(req), SOCK_DIAG_BY_FAMILY,
                           NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req)
    out: List[Tuple[str, int]] = []
    while True:
        data = nl.recv(65536)
        pos = 0
        while pos + _NLMSGHDR.size <= len(data):
            length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, pos)
            if length < _NLMSGHDR.size:
                return out
            body = data[pos + _NLMSGHDR.size : pos + length]
            pos += (length + 3) & ~3
            if kind == NLMSG_DONE:
                return out
            if kind == NLMSG_ERROR:
                (errno,) = struct.unpack_from("=i", body)
                raise OSError(-errno, os.strerror(-errno))
            fam = body[0]
            sport, _dport, src, _dst = _SOCKID.unpack_from(body, _MSG_HEAD.size)
            out.append((_ip_text(fam, src), sport))


class NetlinkScanner:
    """sock_diag dumps over one netlink socket kept open."""

    def __init__(self) -> None:
        self.nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        self.nl.settimeout(2.0)
        self.scan()  # fails here when the kernel lacks sock_diag for inet

    def scan(self) -> FrozenSet[Listener]:
        found = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            for ip, port in _dump(self.nl, family, socket.IPPROTO_TCP, 1 << TCP_LISTEN):
                found.add(("tcp", ip, port))
            for ip, port in _dump(self.nl, family, socket.IPPROTO_UDP, 1 << TCP_CLOSE):
                if port:
                    found.add(("udp", ip, port))
        return frozenset(found)

    def close(self) -> None:
        self.nl.close()


def _proc_ip(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # /proc prints IPv6 as four host-order 32-bit words.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


PROC_TABLES = (("tcp", "/proc/net/tcp", TCP_LISTEN), ("tcp", "/proc/net/tcp6", TCP_LISTEN),
               ("udp", "/proc/net/udp", TCP_CLOSE), ("udp", "/proc/net/udp6", TCP_CLOSE))


def parse_proc_table(proto: str, state: int, text: str) -> List[Listener]:
    """Listeners in one /proc/net table (its header line included)."""
    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or ":" not in fields[1] or int(fields[3], 16) != state:
            continue
        addr, port_hex = fields[1].split(":")
        port = int(port_hex, 16)
        if port:
            found.append((proto, _proc_ip(addr), port))
    return found


class ProcScanner:
    """The /proc/net tables: slower, always there."""

    def scan(self) -> FrozenSet[Listener]:
        found = set()
        for proto, path, state in PROC_TABLES:
            try:
                with open(path) as f:
                    found.update(parse_proc_table(proto, state, f.read()))
            except OSError:
                continue
        return frozenset(found)

    def close(self) -> None:
        pass


def make_scanner() -> NetlinkScanner | ProcScanner:
    try:
        return NetlinkScanner()
    except OSError:
        return ProcScanner()


def as_dicts(listeners: Iterable[Listener]) -> List[Dict[str, Any]]:
    return [{"proto": p, "ip": ip, "port": port} for p, ip, port in sorted(listeners)]


def scan_once() -> Optional[FrozenSet[Listener]]:
    scanner = make_scanner()
    try:
        return scanner.scan()
    finally:
        scanner.close()
