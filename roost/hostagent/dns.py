"""hostResolver: the guest's DNS server, in the host agent (UDP and TCP).

The guest's queries to its network's DNS address are redirected here (the
guest's `roost-dns`, as Lima's host-DNS setup does), so the guest resolves
names as the host does:

* `host.roost.internal` (and Lima's `host.lima.internal`): the host as the
  guest reaches it;
* roost.yaml's `hostResolver.hosts`: a name to an address, or to another
  name (answered as a CNAME, then that name's addresses);
* A and AAAA of every other name: the host's own resolver (getaddrinfo:
  /etc/hosts, nsswitch, a VPN's split DNS), an answer on the host's loopback
  given as the host's address in the guest;
* other types (MX, TXT, SRV, PTR, ...): the raw query, forwarded to the
  nameservers of the host's resolv.conf.

The guest is not trusted: a query is bounded in size and time, a fixed
number are resolved at once (beyond that, REFUSED), and TCP connections are
few and closed when idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from dnslib import AAAA, CNAME, QTYPE, RCODE, RR, A, DNSError, DNSRecord  # type: ignore[import-untyped]

log = logging.getLogger(__name__)

HOST_NAMES = ("host.roost.internal", "host.lima.internal")
TTL = 30  # s, of an answer from the host's resolver (and the server's cache of it)
NEGATIVE_TTL = 5  # s, of "no such name"
CACHE_ENTRIES = 4096
MAX_IN_FLIGHT = 64  # queries resolved at once; more are refused
MAX_TCP_CLIENTS = 16
TCP_IDLE = 10.0  # s: a TCP client that sends nothing in this long is closed
UPSTREAM_TIMEOUT = 3.0  # s, per nameserver
RESOLVE_TIMEOUT = 5.0  # s, for getaddrinfo
MAX_CNAME_DEPTH = 8
RESOLVER_THREADS = 4


def nameservers(resolv_conf: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The `nameserver` lines of resolv.conf; glibc's default when none."""
    servers = []
    with contextlib.suppress(OSError):
        for line in resolv_conf.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    servers.append(str(ipaddress.ip_address(parts[1].split("%")[0])))
    return servers or ["127.0.0.1"]


def _name(n: str) -> str:
    return n.rstrip(".").lower()


@dataclass
class Resolver:
    """What a query is answered with; the servers below carry the bytes."""

    host_address: str
    hosts: Mapping[str, str] = field(default_factory=dict)
    ipv6: bool = False  # AAAA of the host's names (Lima's hostResolver.ipv6)
    resolv_conf: Path = Path("/etc/resolv.conf")
    upstream_port: int = 53
    clock: Callable[[], float] = time.monotonic  # of the answers kept
    in_flight: int = 0
    refused: int = 0

    def __post_init__(self) -> None:
        # Threads of its own: a guest asking for names that never resolve
        # must not hold up the host agent's other work on the default pool.
        self._pool: ThreadPoolExecutor | None = None
        self._cache: dict[tuple[str, int], tuple[float, list[str], int]] = {}
        self._static = {_name(k): v for k, v in self.hosts.items()}
        for n in HOST_NAMES:
            self._static.setdefault(n, self.host_address)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def answer(self, packet: bytes) -> bytes | None:
        """The reply to one query packet (None: nothing to reply to)."""
        try:
            query = DNSRecord.parse(packet)
        except (DNSError, struct.error, IndexError, ValueError, UnicodeError):
            return _formerr(packet)
        if query.header.qr or query.header.opcode != 0 or len(query.questions) != 1:
            reply = query.reply()
            reply.header.rcode = RCODE.NOTIMP if query.header.opcode else RCODE.FORMERR
            return bytes(reply.pack())
        if self.in_flight >= MAX_IN_FLIGHT:
            self.refused += 1
            reply = query.reply()
            reply.header.rcode = RCODE.REFUSED
            return bytes(reply.pack())
        self.in_flight += 1
        try:
            return await self._answer(query, packet)
        finally:
            self.in_flight -= 1

    async def _answer(self, query: DNSRecord, packet: bytes) -> bytes | None:
        q = query.questions[0]
        qname, qtype = _name(str(q.qname)), q.qtype
        reply = query.reply()
        reply.header.ra = 1
        name = qname
        for _ in range(MAX_CNAME_DEPTH):
            target = self._static.get(name)
            if target is None or _is_address(target):
                break
            reply.add_answer(RR(name, QTYPE.CNAME, rdata=CNAME(target), ttl=TTL))
            name = _name(target)
        target = self._static.get(name)
        if target is not None and _is_address(target):
            static = ipaddress.ip_address(target)
            if qtype in (QTYPE.A, QTYPE.ANY) and static.version == 4:
                reply.add_answer(RR(name, QTYPE.A, rdata=A(str(static)), ttl=TTL))
            elif qtype in (QTYPE.AAAA, QTYPE.ANY) and static.version == 6:
                reply.add_answer(RR(name, QTYPE.AAAA, rdata=AAAA(str(static)), ttl=TTL))
            return bytes(reply.pack())  # the name exists: NOERROR, maybe no data
        if qtype == QTYPE.AAAA and not self.ipv6:
            return bytes(reply.pack())  # NOERROR, no data: the guest goes by IPv4
        if qtype in (QTYPE.A, QTYPE.AAAA):
            family = socket.AF_INET if qtype == QTYPE.A else socket.AF_INET6
            addrs, rcode = await self._getaddrinfo(name, family)
            for addr in addrs:
                rtype, rdata = (QTYPE.A, A(addr)) if family == socket.AF_INET else (
                    QTYPE.AAAA, AAAA(addr))
                reply.add_answer(RR(name, rtype, rdata=rdata, ttl=TTL))
            if not reply.rr:
                reply.header.rcode = rcode
            return bytes(reply.pack())
        if name != qname:  # a CNAME of ours to a name whose other records are upstream's
            return bytes(reply.pack())
        return await self._forward(packet, query)

    async def _getaddrinfo(self, name: str, family: int) -> tuple[list[str], int]:
        """The host's answer, kept for as long as the guest is told it may
        keep it (TTL; NEGATIVE_TTL for no address): glibc in the guest keeps
        nothing, and a lookup on the host costs a thread hop and a query."""
        now = self.clock()
        cached = self._cache.get((name, family))
        if cached is not None and cached[0] > now:
            return cached[1], cached[2]
        addrs, rcode = await self._lookup(name, family)
        if rcode != RCODE.SERVFAIL:
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()  # rare: a guest asking for many names
            self._cache[(name, family)] = (now + (TTL if addrs else NEGATIVE_TTL), addrs, rcode)
        return addrs, rcode

    async def _lookup(self, name: str, family: int) -> tuple[list[str], int]:
        loop = asyncio.get_running_loop()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(RESOLVER_THREADS, thread_name_prefix="dns")
        try:
            infos = await asyncio.wait_for(loop.run_in_executor(
                self._pool, socket.getaddrinfo, name, None, family, socket.SOCK_STREAM),
                RESOLVE_TIMEOUT)
        except TimeoutError:
            return [], RCODE.SERVFAIL
        except socket.gaierror as e:
            if e.errno == socket.EAI_NONAME:
                return [], RCODE.NXDOMAIN
            # The name is there without an address of this family.
            if e.errno in (getattr(socket, "EAI_NODATA", -5),
                           getattr(socket, "EAI_ADDRFAMILY", -9)):
                return [], RCODE.NOERROR
            return [], RCODE.SERVFAIL
        addrs: list[str] = []
        for info in infos:
            addr = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if addr.is_loopback:  # the host's loopback is the host, as the guest reaches it
                if addr.version != 4:
                    continue
                addr = ipaddress.ip_address(self.host_address)
            if str(addr) not in addrs:
                addrs.append(str(addr))
        return addrs, RCODE.NOERROR

    async def _forward(self, packet: bytes, query: DNSRecord) -> bytes:
        for server in nameservers(self.resolv_conf):
            try:
                data = await _udp_exchange(server, self.upstream_port, packet)
                if DNSRecord.parse(data).header.tc:
                    data = await _tcp_exchange(server, self.upstream_port, packet)
                return data
            except (OSError, TimeoutError, DNSError, struct.error, ValueError):
                continue
        reply = query.reply()
        reply.header.rcode = RCODE.SERVFAIL
        return bytes(reply.pack())


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _formerr(packet: bytes) -> bytes | None:
    """FORMERR for a query whose header at least is there."""
    if len(packet) < 12:
        return None
    (qid,) = struct.unpack("!H", packet[:2])
    return struct.pack("!HHHHHH", qid, 0x8000 | RCODE.FORMERR, 0, 0, 0, 0)


class _OneReply(asyncio.DatagramProtocol):
    def __init__(self, qid: bytes) -> None:
        self.qid = qid
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if data[:2] == self.qid and not self.reply.done():
            self.reply.set_result(data)


async def _udp_exchange(server: str, port: int, packet: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _OneReply(packet[:2]), remote_addr=(server, port))
    try:
        transport.sendto(packet)
        return await asyncio.wait_for(proto.reply, UPSTREAM_TIMEOUT)
    finally:
        transport.close()


async def _tcp_exchange(server: str, port: int, packet: bytes) -> bytes:
    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(server, port)
        try:
            writer.write(struct.pack("!H", len(packet)) + packet)
            (n,) = struct.unpack("!H", await reader.readexactly(2))
            return await reader.readexactly(n)
        finally:
            writer.close()

    return await asyncio.wait_for(exchange(), UPSTREAM_TIMEOUT)


class _UDPServer(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        task = asyncio.ensure_future(self._reply(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self.resolver.answer(data)
        if reply is not None and self.transport is not None:
            if len(reply) > 512:  # no EDNS: the client asks again over TCP
                with contextlib.suppress(DNSError, struct.error, ValueError):
                    rec = DNSRecord.parse(reply)
                    rec.rr, rec.auth, rec.ar = [], [], []
                    rec.header.tc = 1
                    reply = bytes(rec.pack())
            self.transport.sendto(reply, addr)


@dataclass
class DNSServer:
    """hostResolver's UDP and TCP listeners on one loopback port."""

    resolver: Resolver
    port: int = 0
    _udp: socket.socket | None = None
    _tcp: socket.socket | None = None
    _udp_transport: asyncio.DatagramTransport | None = None
    _udp_protocol: _UDPServer | None = None
    _tcp_server: asyncio.Server | None = None
    _clients: set[asyncio.Task[None]] = field(default_factory=set)

    def bind(self, want: int = 0) -> int:
        """Bind UDP and TCP on 127.0.0.1 to one port: `want` if it is free
        (a resumed guest's rules name the port it had), else any."""
        for port in ([want] if want else []) + [0] * 20:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                udp.bind(("127.0.0.1", port))
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind(("127.0.0.1", udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                if port == want and want:
                    log.warning("hostResolver: port %d is taken; serving on another, "
                                "which a restored guest is told of on wake", want)
                continue
            tcp.listen(16)
            self._udp, self._tcp, self.port = udp, tcp, udp.getsockname()[1]
            return self.port
        raise OSError("hostResolver: no port free for both UDP and TCP on 127.0.0.1")

    async def start(self) -> None:
        if self._udp is None:
            self.bind()
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _UDPServer(self.resolver), sock=self._udp)
        self._udp_transport, self._udp_protocol = transport, protocol
        self._tcp_server = await asyncio.start_server(self._serve_tcp, sock=self._tcp)

    async def _serve_tcp(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._clients) >= MAX_TCP_CLIENTS:
            writer.close()
            return
        self._clients.add(task)
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                (n,) = struct.unpack("!H", head)
                packet = await asyncio.wait_for(reader.readexactly(n), TCP_IDLE)
                reply = await self.resolver.answer(packet)
                if reply is None:
                    return
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()

    async def stop(self) -> None:
        if self._tcp_server is not None:
            self._tcp_server.close()
        tasks = [*self._clients, *(self._udp_protocol.tasks if self._udp_protocol else ())]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._udp_transport is not None:
            self._udp_transport.close()
        elif self._udp is not None:
            self._udp.close()
        if self._tcp_server is None and self._tcp is not None:
            self._tcp.close()
        self.resolver.close()
