"""Which host address a guest listener is forwarded to, by Lima's rules.

Order: the guest's SSH port is ignored, then the user's rules (first match
wins), then the default rule (guest 127.0.0.1, ports 1024 and up, to the
same port on host 127.0.0.1; privileged guest ports need a rule, as
DESIGN.md says, so a guest service on port 80 never needs host root).
A rule for guestIP 127.0.0.1 also matches a listener on 0.0.0.0 (it is
reachable on loopback too) and ::1; guestIP 0.0.0.0 matches any address
unless guestIPMustBeZero.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from roost.config.model import PortForward

FIRST_UNPRIVILEGED_PORT = 1024
DEFAULT_RULE = PortForward(guest_port_range=(FIRST_UNPRIVILEGED_PORT, 65535))


@dataclass(frozen=True, order=True)
class Listener:
    proto: str  # "tcp" | "udp"
    ip: str
    port: int

    @property
    def unspecified(self) -> bool:
        return ipaddress.ip_address(self.ip).is_unspecified

    def connect_host(self) -> str:
        """Where to connect inside the guest to reach this listener."""
        if self.ip == "0.0.0.0":
            return "127.0.0.1"
        if self.ip == "::":
            return "::1"
        return self.ip

    def addr(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclass(frozen=True, order=True)
class HostAddr:
    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@dataclass(frozen=True, order=True)
class HostSocket:
    """A host Unix socket that a guest TCP port is forwarded to (Lima's
    guestPort with hostSocket)."""

    path: str

    def __str__(self) -> str:
        return self.path


def _ip_matches(rule: PortForward, guest: Listener) -> bool:
    gip = ipaddress.ip_address(guest.ip)
    rip = ipaddress.ip_address(rule.guest_ip)
    if gip.is_unspecified:
        return True
    if gip == rip:
        return True
    if gip == ipaddress.ip_address("::1") and rip == ipaddress.ip_address("127.0.0.1"):
        return True
    return rip.is_unspecified and not rule.guest_ip_must_be_zero


def _guest_range(rule: PortForward) -> tuple[int, int]:
    return rule.guest_range() or (1, 65535)


def host_address(rules: list[PortForward], guest: Listener, ssh_port: int = 22,
                 host_ssh_port: int | None = None) -> HostAddr | None:
    """The host address for `guest`, or None when it is not forwarded."""
    decided = decide(rules, guest, ssh_port, host_ssh_port)
    return decided if isinstance(decided, HostAddr) else None


def decide(rules: list[PortForward], guest: Listener, ssh_port: int = 22,
           host_ssh_port: int | None = None) -> HostAddr | HostSocket | str:
    """The host address (or socket) for `guest`, or why it is not forwarded.

    `host_ssh_port` (ssh.localPort) is never a guest port to forward, on
    any address or protocol, as in Lima: its host port is the SSH forward's.
    """
    if guest.proto == "tcp" and guest.port == ssh_port:
        return "the guest's sshd"
    if guest.port == host_ssh_port:
        return f"port {host_ssh_port} is the host's SSH port for this instance (ssh.localPort)"
    for rule in [*rules, DEFAULT_RULE]:
        if rule.guest_socket is not None:
            continue
        if rule.proto not in ("any", guest.proto):
            continue
        lo, hi = _guest_range(rule)
        if not lo <= guest.port <= hi:
            continue
        if not _ip_matches(rule, guest):
            continue
        if rule.ignore:
            if guest.unspecified and not ipaddress.ip_address(rule.guest_ip).is_unspecified:
                continue  # ignoring loopback leaves an all-addresses listener alone
            return "a portForwards rule ignores it"
        if rule.host_socket is not None:
            if guest.proto != "tcp":
                continue  # a stream socket: TCP only
            return HostSocket(rule.host_socket)
        host_lo = (rule.host_range() or (lo, hi))[0]
        return HostAddr(rule.host_ip, host_lo + (guest.port - lo))
    if guest.port < FIRST_UNPRIVILEGED_PORT:
        return "a privileged port: forwarded only by a portForwards rule"
    return "no portForwards rule matches its address"
