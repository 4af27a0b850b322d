"""hostResolver's DNS server (roost.hostagent.dns) and the built-in image's
relay to it (roost_guest.dnsrelay), over real UDP and TCP sockets: the
names it answers itself, the host's resolver, forwarding to resolv.conf's
nameservers (a real upstream server here), and a guest's bad or many queries."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
from dnslib import QTYPE, RCODE, RR, TXT, DNSRecord  # type: ignore[import-untyped]

from roost.hostagent import dns
from roost.hostagent.dns import DNSServer, Resolver
from roost_guest import agent as guest
from roost_guest import identity
from roost_guest.dnsrelay import Relay
from tests.unit.guest_harness import harmless_agent

HOST = "192.168.5.2"


async def udp_query(port: int, packet: bytes, timeout: float = 5) -> bytes:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[bytes] = loop.create_future()

    class Proto(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            if not fut.done():
                fut.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Proto, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(packet)
        return await asyncio.wait_for(fut, timeout)
    finally:
        transport.close()


async def tcp_query(port: int, packet: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(struct.pack("!H", len(packet)) + packet)
        (n,) = struct.unpack("!H", await reader.readexactly(2))
        return await reader.readexactly(n)
    finally:
        writer.close()


def ask(name: str, qtype: str = "A") -> bytes:
    return bytes(DNSRecord.question(name, qtype).pack())


def answers(reply: bytes) -> tuple[int, list[str]]:
    rec = DNSRecord.parse(reply)
    return rec.header.rcode, [str(rr.rdata) for rr in rec.rr]


class Upstream(asyncio.DatagramProtocol):
    """A real nameserver (UDP and TCP) that knows TXT records only it has."""

    def __init__(self, big: bool = False) -> None:
        self.big = big
        self.transport: asyncio.DatagramTransport | None = None
        self.asked: list[str] = []

    def reply(self, packet: bytes) -> bytes:
        q = DNSRecord.parse(packet)
        self.asked.append(str(q.q.qname))
        r = q.reply()
        n = 40 if self.big else 1
        for i in range(n):
            r.add_answer(RR(q.q.qname, QTYPE.TXT, rdata=TXT(f"upstream-only {i:02d} " + "x" * 40)))
        return bytes(r.pack())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        reply = self.reply(data)
        if len(reply) > 512:  # as a real server without EDNS: truncated, ask over TCP
            rec = DNSRecord.parse(reply)
            rec.rr = []
            rec.header.tc = 1
            reply = bytes(rec.pack())
        self.transport.sendto(reply, addr)

    async def serve_tcp(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        (n,) = struct.unpack("!H", await r.readexactly(2))
        reply = self.reply(await r.readexactly(n))
        w.write(struct.pack("!H", len(reply)) + reply)
        await w.drain()
        w.close()


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[tuple[Upstream, Path, int]]:
    loop = asyncio.get_running_loop()
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    port = tcp.getsockname()[1]
    proto = Upstream(big=True)
    transport, _ = await loop.create_datagram_endpoint(lambda: proto,
                                                       local_addr=("127.0.0.1", port))
    tcp.listen(8)
    server = await asyncio.start_server(proto.serve_tcp, sock=tcp)
    conf = tmp_path / "resolv.conf"
    conf.write_text("# a comment\nsearch example\nnameserver 127.0.0.1\n")
    yield proto, conf, port
    server.close()
    transport.close()


@pytest.fixture
async def server(upstream: tuple[Upstream, Path, int]) -> AsyncIterator[DNSServer]:
    _, conf, port = upstream
    s = DNSServer(Resolver(HOST, hosts={"db.test": "10.1.2.3", "alias.test": "db.test",
                                        "v6.test": "fd00::5"},
                           resolv_conf=conf, upstream_port=port, ipv6=True))
    await s.start()
    yield s
    await s.stop()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_names_of_its_own_over_udp_and_tcp(server: DNSServer, transport: str) -> None:
    query = udp_query if transport == "udp" else tcp_query
    assert answers(await query(server.port, ask("host.roost.internal"))) == (0, [HOST])
    assert answers(await query(server.port, ask("HOST.lima.internal."))) == (0, [HOST])
    assert answers(await query(server.port, ask("db.test"))) == (0, ["10.1.2.3"])
    # A name to a name: a CNAME, then the target's address.
    assert answers(await query(server.port, ask("alias.test"))) == (0, ["db.test.", "10.1.2.3"])
    assert answers(await query(server.port, ask("v6.test", "AAAA"))) == (0, ["fd00::5"])
    # The name exists with no record of that type: NOERROR, empty.
    assert answers(await query(server.port, ask("db.test", "AAAA"))) == (0, [])


async def test_other_names_go_by_the_hosts_resolver(server: DNSServer) -> None:
    # The host's own name, in its /etc/hosts or nsswitch: what the host resolves.
    name = socket.gethostname()
    host_addrs = {str(i[4][0]) for i in socket.getaddrinfo(name, None, socket.AF_INET)}
    want = sorted({HOST if a.startswith("127.") else a for a in host_addrs})
    rcode, got = answers(await udp_query(server.port, ask(name)))
    assert (rcode, sorted(got)) == (0, want)
    # The host's loopback is the host as the guest reaches it.
    assert answers(await udp_query(server.port, ask("localhost"))) == (0, [HOST])
    rcode, got = answers(await udp_query(server.port, ask("no-such-name.invalid")))
    assert (rcode, got) == (RCODE.NXDOMAIN, [])


async def test_other_types_are_forwarded_to_the_hosts_nameservers(
        server: DNSServer, upstream: tuple[Upstream, Path, int]) -> None:
    proto, _, _ = upstream
    # 40 TXT records: more than 512 bytes; upstream truncates over UDP, so the
    # server asks again over TCP, and truncates to its own UDP client in turn.
    over_udp = DNSRecord.parse(await udp_query(server.port, ask("big.example", "TXT")))
    assert over_udp.header.tc == 1
    over_tcp = DNSRecord.parse(await tcp_query(server.port, ask("big.example", "TXT")))
    assert over_tcp.header.tc == 0 and len(over_tcp.rr) == 40
    assert "upstream-only 39" in str(over_tcp.rr[-1].rdata)
    assert proto.asked.count("big.example.") == 4  # UDP then TCP, each time


async def test_no_upstream_answer_is_servfail(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.1\n")
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing answers there: refused at once
    s = DNSServer(Resolver(HOST, resolv_conf=conf, upstream_port=port))
    await s.start()
    try:
        rcode, _ = answers(await udp_query(s.port, ask("x.example", "MX")))
        assert rcode == RCODE.SERVFAIL
    finally:
        await s.stop()


async def test_bad_and_many_queries_from_the_guest(server: DNSServer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Garbage with a header: FORMERR with its id; shorter than a header: no answer.
    garbage = b"\x12\x34" + b"\x01\x00\x00\x05" + b"\xff" * 20
    reply = await udp_query(server.port, garbage)
    assert reply[:2] == b"\x12\x34" and reply[3] & 0xF == RCODE.FORMERR
    with pytest.raises(TimeoutError):
        await udp_query(server.port, b"\x00\x01", timeout=0.5)
    # A response sent as a query, or another opcode: refused as such.
    rec = DNSRecord.question("db.test")
    rec.header.qr = 1
    assert answers(await udp_query(server.port, bytes(rec.pack())))[0] == RCODE.FORMERR
    # More at once than it resolves: the rest REFUSED, at once.
    monkeypatch.setattr(dns, "MAX_IN_FLIGHT", 2)
    gate = asyncio.Event()

    async def slow(name: str, family: int) -> tuple[list[str], int]:
        await gate.wait()
        return ["10.9.9.9"], 0

    monkeypatch.setattr(server.resolver, "_getaddrinfo", slow)
    held = [asyncio.ensure_future(udp_query(server.port, ask(f"slow{i}.example")))
            for i in range(2)]
    await asyncio.sleep(0.3)
    assert answers(await udp_query(server.port, ask("third.example")))[0] == RCODE.REFUSED
    gate.set()
    assert [answers(r) for r in await asyncio.gather(*held)] == [(0, ["10.9.9.9"])] * 2
    assert server.resolver.refused == 1
    # Its own names still answer meanwhile and after.
    assert answers(await udp_query(server.port, ask("db.test"))) == (0, ["10.1.2.3"])


async def test_a_tcp_client_that_sends_nothing_is_closed(server: DNSServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dns, "TCP_IDLE", 0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_the_port_a_resumed_guest_names_is_taken_again() -> None:
    first = DNSServer(Resolver(HOST))
    port = first.bind()
    await first.stop()
    again = DNSServer(Resolver(HOST))
    assert again.bind(port) == port
    # Taken: another port, rather than no DNS at all.
    other = DNSServer(Resolver(HOST))
    assert other.bind(port) != port
    await again.stop()
    await other.stop()


async def test_the_guest_relay_carries_udp_and_tcp(server: DNSServer) -> None:
    """The built-in image's relay (guest side), to the host's server."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    logged: list[str] = []
    relay = Relay(("127.0.0.1", server.port), logged.append, listen=("127.0.0.1", port))
    assert relay.start(), logged
    try:
        assert answers(await udp_query(port, ask("host.roost.internal"))) == (0, [HOST])
        assert answers(await tcp_query(port, ask("alias.test"))) == (0, ["db.test.", "10.1.2.3"])
        # A second relay on the same port says why it cannot serve.
        second = Relay(("127.0.0.1", server.port), logged.append, listen=("127.0.0.1", port))
        assert not second.start()
        assert f"cannot listen on 127.0.0.1:{port}" in logged[0]
    finally:
        relay.udp.close()
        relay.tcp.close()


async def test_the_relay_moves_to_another_port(server: DNSServer) -> None:
    """A restored guest's relay, told where its host agent's server is now
    (dns-port): UDP and TCP go there from then on, none to the old one."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    moved = DNSServer(Resolver(HOST, hosts={"db.test": "10.9.9.9"}))
    await moved.start()
    relay = Relay(("127.0.0.1", server.port), print, listen=("127.0.0.1", port))
    assert relay.start()
    try:
        assert answers(await udp_query(port, ask("db.test"))) == (0, ["10.1.2.3"])
        relay.move(moved.port)
        assert relay.upstream == ("127.0.0.1", moved.port)
        for query in (udp_query, tcp_query):
            assert answers(await query(port, ask("db.test"))) == (0, ["10.9.9.9"])
        await server.stop()  # the old one gone: nothing depends on it
        assert answers(await udp_query(port, ask("db.test"))) == (0, ["10.9.9.9"])
    finally:
        relay.udp.close()
        relay.tcp.close()
        await moved.stop()


def test_dns_port_requests_are_checked(tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The guest agent's dns-port: a port, or a clear error; a guest with
    neither the relay nor roost-dns's redirect says there is nothing to move."""
    agent = harmless_agent(str(tmp_path))
    for bad in (None, "53", 0, 65536, True, 5.5):
        with pytest.raises(guest.RequestError, match="dns-port needs port"):
            agent.move_dns(None, {"port": bad})  # type: ignore[arg-type]
    monkeypatch.setattr(identity, "DNS_MOVE", ("/bin/sh", str(tmp_path / "roost-dns"), "--move"))
    with pytest.raises(guest.RequestError, match="not redirected by roost-dns"):
        agent.move_dns(None, {"port": 5353})  # type: ignore[arg-type]
    relay = Relay(("10.0.2.2", 40000), print)
    try:
        agent.dns_relay = relay
        assert agent.move_dns(None, {"port": 5353}) == {  # type: ignore[arg-type]
            "dns": "relay 10.0.2.2:5353"}
    finally:
        relay.udp.close()
        relay.tcp.close()


async def test_the_relay_keeps_clients_with_the_same_query_id_apart(server: DNSServer) -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    relay = Relay(("127.0.0.1", server.port), print, listen=("127.0.0.1", port))
    assert relay.start()
    try:
        names = {"db.test": "10.1.2.3", "host.roost.internal": HOST}
        packets = []
        for name in names:
            q = DNSRecord.question(name)
            q.header.id = 4242  # both clients chose the same id
            packets.append(bytes(q.pack()))
        replies = await asyncio.gather(*(udp_query(port, p) for p in packets))
        for (name, addr), reply in zip(names.items(), replies, strict=True):
            rec = DNSRecord.parse(reply)
            assert rec.header.id == 4242 and str(rec.q.qname) == name + "."
            assert [str(rr.rdata) for rr in rec.rr] == [addr]
    finally:
        relay.udp.close()
        relay.tcp.close()


async def test_the_hosts_answers_are_kept_for_their_ttl(server: DNSServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    lookup = server.resolver._lookup

    async def counted(name: str, family: int) -> tuple[list[str], int]:
        calls.append(name)
        return await lookup(name, family)

    monkeypatch.setattr(server.resolver, "_lookup", counted)
    for _ in range(3):
        assert answers(await udp_query(server.port, ask("localhost"))) == (0, [HOST])
        assert answers(await udp_query(server.port, ask("gone.invalid")))[0] == RCODE.NXDOMAIN
    assert calls == ["localhost", "gone.invalid"]
    now = time.monotonic()
    monkeypatch.setattr(server.resolver, "clock", lambda: now + dns.NEGATIVE_TTL + 1)
    await udp_query(server.port, ask("localhost"))
    await udp_query(server.port, ask("gone.invalid"))
    assert calls == ["localhost", "gone.invalid", "gone.invalid"]  # "no such name" expired first
