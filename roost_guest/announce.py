"""Gratuitous ARP after a restore.

QEMU's user-mode network (slirp) starts with an empty ARP table when a
saved VM is restored into a new QEMU. The first packet it has for the guest
(a forwarded SSH connection) then waits on an ARP round trip that slirp
only completes on its next slow timer, about 0.5 s later. A gratuitous ARP
from the guest fills the table first, as a migrated VM announces itself.

Standard library only: runs in the guest.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List

SIOCGIFADDR = 0x8915
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
ETH_P_ARP = 0x0806
NET_DIR = "/sys/class/net"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _ipv4(ifname: str) -> bytes:
    """The interface's IPv4 address (4 bytes); OSError when it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("256s", ifname.encode()[:15])
        return fcntl.ioctl(s.fileno(), SIOCGIFADDR, req)[20:24]


def arp_frame(mac: bytes, ip: bytes) -> bytes:
    """A gratuitous ARP request: sender and target are both `ip`."""
    ether = b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\x00" * 6 + ip
    return (ether + arp).ljust(60, b"\x00")  # the Ethernet minimum


def gratuitous_arp() -> List[str]:
    """Announce each up, non-loopback interface with an IPv4 address; their names."""
    announced = []
    for ifname in sorted(os.listdir(NET_DIR)):
        try:
            flags = int(_read(os.path.join(NET_DIR, ifname, "flags")), 16)
            if not flags & IFF_UP or flags & IFF_LOOPBACK:
                continue
            mac = bytes.fromhex(_read(os.path.join(NET_DIR, ifname, "address")).replace(":", ""))
            ip = _ipv4(ifname)
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
                s.bind((ifname, 0))
                s.send(arp_frame(mac, ip))
        except (OSError, ValueError):
            continue  # no address, no permission, gone meanwhile: nothing to announce
        announced.append(ifname)
    return announced
