from __future__ import annotations

from pathlib import Path

import pytest

from roost.config.loader import parse_config
from roost.hostagent.portfwd.rules import HostAddr, HostSocket, Listener, decide, host_address


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


def test_guest_ip_must_be_zero_alone_means_guest_ip_zero() -> None:
    # As Lima fills it in: no guestIP with guestIPMustBeZero is 0.0.0.0.
    r = rules({"guestIPMustBeZero": True, "guestPort": 7000, "hostPort": 7700})
    assert r[0].guest_ip == "0.0.0.0"
    assert host_address(r, Listener("tcp", "0.0.0.0", 7000)) == HostAddr("127.0.0.1", 7700)
    # Only an all-addresses listener matches it; loopback falls to the default rule.
    assert host_address(r, Listener("tcp", "127.0.0.1", 7000)) == HostAddr("127.0.0.1", 7000)


def test_the_hosts_ssh_port_is_never_a_guest_port_to_forward() -> None:
    # ssh.localPort on the host is the SSH forward's: a guest listener on the
    # same number is ignored on every address and protocol, before any rule.
    r = rules({"guestPort": 60022, "hostPort": 7000})
    for lst in (Listener("tcp", "127.0.0.1", 60022), Listener("tcp", "::", 60022),
                Listener("udp", "0.0.0.0", 60022)):
        assert host_address(r, lst, host_ssh_port=60022) is None
        assert "ssh.localPort" in str(decide(r, lst, host_ssh_port=60022))
    assert host_address(r, Listener("tcp", "127.0.0.1", 60022)) == HostAddr("127.0.0.1", 7000)


def test_why_a_listener_is_not_forwarded() -> None:
    r = rules({"guestPort": 5000, "ignore": True})
    assert decide(r, Listener("tcp", "0.0.0.0", 22)) == "the guest's sshd"
    assert decide(r, Listener("tcp", "127.0.0.1", 5000)) == "a portForwards rule ignores it"
    assert "privileged" in str(decide(r, Listener("tcp", "127.0.0.1", 80)))
    assert "no portForwards rule matches" in str(decide(r, Listener("tcp", "10.0.2.15", 8080)))


def test_tcp_host_ip_any_v6_takes_ipv4_too() -> None:
    import socket

    from roost.hostagent.portfwd.forward import _dual_stack_listener

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    listener = _dual_stack_listener(port)
    try:
        listener.setblocking(True)
        for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(family) as client:
                client.connect((addr, port))
                conn, peer = listener.accept()
                conn.close()
                assert peer[0].endswith(addr), peer
    finally:
        listener.close()


ANY = {"guestIP": "0.0.0.0", "guestPort": 6000, "hostPort": 16000}
EXACT_ZERO = {"guestIP": "0.0.0.0", "guestIPMustBeZero": True, "guestPort": 6000,
              "hostPort": 26000}


@pytest.mark.parametrize(("rule", "listener", "host"), [
    # guestIP 0.0.0.0: any address.
    (ANY, ("tcp", "0.0.0.0", 6000), 16000),
    (ANY, ("tcp", "192.168.5.15", 6000), 16000),
    (ANY, ("tcp", "127.0.0.1", 6000), 16000),
    (ANY, ("udp", "::", 6000), 16000),
    # ... and with guestIPMustBeZero, only the all-addresses ones; loopback falls
    # through to the default rule, another address is not forwarded.
    (EXACT_ZERO, ("tcp", "0.0.0.0", 6000), 26000),
    (EXACT_ZERO, ("tcp", "::", 6000), 26000),
    (EXACT_ZERO, ("tcp", "127.0.0.1", 6000), 6000),
    (EXACT_ZERO, ("tcp", "192.168.5.15", 6000), None),
    # guestIPMustBeZero alone is the same rule.
    ({k: v for k, v in EXACT_ZERO.items() if k != "guestIP"}, ("tcp", "192.168.5.15", 6000),
     None),
    ({k: v for k, v in EXACT_ZERO.items() if k != "guestIP"}, ("tcp", "0.0.0.0", 6000), 26000),
])
def test_guest_ip_spellings(rule: dict[str, object], listener: tuple[str, str, int],
                            host: int | None) -> None:
    got = host_address(rules(rule), Listener(*listener))
    assert (got.port if got else None) == host


def test_guest_port_to_host_socket() -> None:
    """Lima's guestPort with hostSocket: that TCP port, on the rule's
    addresses, to the socket; UDP on the same port goes on to later rules."""
    r = rules({"guestPort": 8080, "hostSocket": "/tmp/roost-web.sock"})
    assert decide(r, Listener("tcp", "127.0.0.1", 8080)) == HostSocket("/tmp/roost-web.sock")
    assert decide(r, Listener("tcp", "0.0.0.0", 8080)) == HostSocket("/tmp/roost-web.sock")
    assert decide(r, Listener("udp", "127.0.0.1", 8080)) == HostAddr("127.0.0.1", 8080)
    assert decide(r, Listener("tcp", "192.168.5.15", 8080)) == \
        "no portForwards rule matches its address"
    assert host_address(r, Listener("tcp", "127.0.0.1", 8080)) is None  # no host port


def test_a_relative_host_socket_is_in_the_instances_sock_directory() -> None:
    """As Lima's: made absolute at start, under NAME/sock/; too long a result is refused."""
    [rule] = rules({"guestPort": 8080, "hostSocket": "web/./api.sock"})
    assert rule.host_socket == "web/api.sock"
    assert rule.in_instance(Path("/home/u/.roost/dev/sock")).host_socket == \
        "/home/u/.roost/dev/sock/web/api.sock"
    [absolute] = rules({"guestPort": 8080, "hostSocket": "/run/user/1000/web.sock"})
    assert absolute.in_instance(Path("/elsewhere")) is absolute
    with pytest.raises(ValueError, match="at most 107 bytes"):
        rule.in_instance(Path("/" + "d" * 100))
