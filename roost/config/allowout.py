"""roost.yaml's `network.allowOut`: the destinations a cut-off guest may
still reach, through the host agent's egress proxy (roost.hostagent.egress).

An entry is a host name (`example.com`: that name only), a wildcard
(`*.example.com`: its subdomains, not the name itself), an IP address or a
CIDR (`10.0.0.0/8`, `2001:db8::/32`). Any port. The host's own addresses
(loopback, link-local...) are reached only through an entry within them
(`127.0.0.1`), never through a broad one (`0.0.0.0/0`) or a name. A request by name is
checked against the names (and resolved by the host only when listed), one
by address against the addresses and CIDRs.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")


def unmapped(address: IPAddress) -> IPAddress:
    """`::ffff:10.1.2.3` is `10.1.2.3`: what the list and the checks compare."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def normal_name(name: str) -> str:
    """A host name as compared: lower case, without the root's dot."""
    return name.lower().removesuffix(".")


def is_host_name(name: str) -> bool:
    return len(name) <= 253 and _NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class AllowList:
    names: frozenset[str]
    suffixes: tuple[str, ...]  # ".example.com" for "*.example.com"
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: list[str]) -> AllowList:
        """ValueError naming the first entry that is none of the forms."""
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for entry in entries:
            text = entry.strip()
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
                continue
            except ValueError:
                pass
            name = normal_name(text)
            if name.startswith("*.") and is_host_name(name[2:]):
                suffixes.append(name[1:])
            elif is_host_name(name) and not name.replace(".", "").isdigit():
                names.add(name)
            else:
                raise ValueError(
                    f"{entry!r} is not a host name, a *.wildcard, an IP address or a CIDR "
                    "(e.g. example.com, *.example.com, 10.1.2.3, 10.0.0.0/8)")
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def allows_name(self, name: str) -> bool:
        name = normal_name(name)
        return name in self.names or any(name.endswith(s) for s in self.suffixes)

    def allows_address(self, address: IPAddress) -> bool:
        address = unmapped(address)
        return any(address in net for net in self.networks)
