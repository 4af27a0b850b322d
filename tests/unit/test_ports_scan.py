"""Listening-socket scans: netlink sock_diag and /proc/net agree, for TCP and
UDP over IPv4 and IPv6."""

from __future__ import annotations

import socket

from roost_guest.ports import NetlinkScanner, ProcScanner, _proc_ip


def test_netlink_and_proc_agree_on_fresh_listeners() -> None:
    socks = []
    for family, kind, host in ((socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1"),
                               (socket.AF_INET6, socket.SOCK_STREAM, "::1"),
                               (socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1"),
                               (socket.AF_INET6, socket.SOCK_DGRAM, "::")):
        s = socket.socket(family, kind)
        s.bind((host, 0))
        if kind == socket.SOCK_STREAM:
            s.listen(1)
        socks.append((("tcp" if kind == socket.SOCK_STREAM else "udp"), host,
                      s.getsockname()[1], s))
    try:
        netlink = NetlinkScanner()
        found = netlink.scan()
        netlink.close()
        assert found == ProcScanner().scan()
        for proto, host, port, _ in socks:
            assert (proto, host, port) in found
        # A connected (not listening) TCP socket is not reported.
        client = socket.create_connection(("127.0.0.1", socks[0][2]))
        assert not any(p == client.getsockname()[1] for _, _, p in NetlinkScanner().scan())
        client.close()
    finally:
        for *_, s in socks:
            s.close()


def test_proc_address_decoding() -> None:
    assert _proc_ip("0100007F") == "127.0.0.1"
    assert _proc_ip("00000000000000000000000001000000") == "::1"
