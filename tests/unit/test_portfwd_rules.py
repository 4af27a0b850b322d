from __future__ import annotations

from roost.config.loader import parse_config
from roost.hostagent.portfwd.rules import HostAddr, Listener, host_address


def rules(*raw: dict[str, object]) -> list:  # type: ignore[type-arg]
    return list(parse_config({"portForwards": list(raw)}).port_forwards)


def test_default_forwards_loopback_and_any_to_same_port() -> None:
    assert host_address([], Listener("tcp", "127.0.0.1", 8080)) == HostAddr("127.0.0.1", 8080)
    assert host_address([], Listener("tcp", "0.0.0.0", 8080)) == HostAddr("127.0.0.1", 8080)
    assert host_address([], Listener("udp", "::", 5353)) == HostAddr("127.0.0.1", 5353)
    assert host_address([], Listener("tcp", "::1", 9000)) == HostAddr("127.0.0.1", 9000)


def test_ssh_port_privileged_ports_and_other_addresses_are_not_forwarded() -> None:
    assert host_address([], Listener("tcp", "0.0.0.0", 22)) is None
    assert host_address([], Listener("tcp", "127.0.0.1", 80)) is None
    assert host_address([], Listener("tcp", "192.168.5.15", 8080)) is None


def test_remap_and_range() -> None:
    r = rules({"guestPort": 80, "hostPort": 8080},
              {"guestPortRange": [3000, 3009], "hostPortRange": [13000, 13009]})
    assert host_address(r, Listener("tcp", "127.0.0.1", 80)) == HostAddr("127.0.0.1", 8080)
    assert host_address(r, Listener("tcp", "0.0.0.0", 3004)) == HostAddr("127.0.0.1", 13004)


def test_ignore_rules_and_first_match_wins() -> None:
    r = rules({"guestPort": 5000, "ignore": True}, {"guestPort": 5000, "hostPort": 5555})
    assert host_address(r, Listener("tcp", "127.0.0.1", 5000)) is None
    # An ignore rule for loopback does not hide an all-addresses listener.
    assert host_address(r, Listener("tcp", "0.0.0.0", 5000)) == HostAddr("127.0.0.1", 5555)
    r = rules({"guestIP": "0.0.0.0", "guestPort": 5000, "ignore": True})
    assert host_address(r, Listener("tcp", "0.0.0.0", 5000)) is None


def test_proto_and_guest_ip_must_be_zero() -> None:
    r = rules({"guestPort": 53, "proto": "udp", "hostPort": 5353},
              {"guestIP": "0.0.0.0", "guestIPMustBeZero": True, "guestPort": 7000,
               "hostIP": "0.0.0.0"})
    assert host_address(r, Listener("udp", "127.0.0.1", 53)) == HostAddr("127.0.0.1", 5353)
    assert host_address(r, Listener("tcp", "127.0.0.1", 53)) is None  # privileged, no rule
    assert host_address(r, Listener("tcp", "0.0.0.0", 7000)) == HostAddr("0.0.0.0", 7000)
    assert host_address(r, Listener("tcp", "127.0.0.1", 7000)) == HostAddr("127.0.0.1", 7000)
