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

DEFAULT_RULE = PortForward(guest_port_range=(1024, 65535))


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


def host_address(rules: list[PortForward], guest: Listener, ssh_port: int = 22) -> HostAddr | None:
    """The host address for `guest`, or None when it is not forwarded."""
    if guest.proto == "tcp" and guest.port == ssh_port:
        return None
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
            return None
        host_lo = (rule.host_range() or (lo, hi))[0]
        return HostAddr(rule.host_ip, host_lo + (guest.port - lo))
    return None
