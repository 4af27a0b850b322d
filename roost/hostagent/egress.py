"""The egress proxy: how a guest cut off from the network (`internet:
false`) reaches what roost.yaml's `network.allowOut` lets through.

QEMU's user network runs restricted, so nothing the guest sends leaves it
on its own. The guest agent listens on the guest's 127.0.0.1:PORT (its
proxy variables name it) and hands each connection to the host agent as a
stream. Everything is decided here, on the host: the request is an HTTP
proxy request, `CONNECT host:port` (HTTPS, or any TCP a client tunnels) or
an absolute-form `GET http://host/...`; its destination must be on the
allow-list: an address by the list's addresses and CIDRs, a name by its
names (the host resolves a listed name; an unlisted one is not looked up,
since the lookup would carry what the guest wrote in it to DNS servers).
The host's own addresses (loopback, unspecified, link-local, multicast)
pass only when an entry within them is listed, and its interface addresses
only when listed by themselves: the proxy runs on the host, where they are
the host itself, whatever a name resolves to or a CIDR holds.

What is checked is the destination the host connects to. What a client
then says there (another Host or TLS server name at a listed CDN address)
is between it and that destination.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from roost.cidata.proxyenv import EGRESS_PROXY_PORT
from roost.config.allowout import (
    AllowList,
    IPAddress,
    IPNetwork,
    is_host_name,
    normal_name,
    unmapped,
)
from roost.hostagent.guestagent import GuestAgentError, StreamReset, TunnelStream

log = logging.getLogger("roost.hostagent")

MAX_HEAD = 16 << 10  # bytes of request line and headers
HEAD_SECONDS = 30.0  # for the client to send its request
RESOLVE_SECONDS = 10.0
CONNECT_SECONDS = 15.0
MAX_OPEN = 256  # connections at once (each holds a host socket); more get 503
RESOLVER_THREADS = 4  # lookups at once, in a pool of their own
LOG_FIRST = 20  # refusals logged one by one; then every LOG_EVERY-th
LOG_EVERY = 100

# Not passed on: hop-by-hop, and Host (the proxy writes the one it checked).
NOT_PASSED_ON = {"connection", "keep-alive", "proxy-connection", "proxy-authorization",
                 "proxy-authenticate", "te", "trailer", "upgrade", "host"}
_PORT = re.compile(r"[0-9]{1,5}")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # in a line: anything but tab
_VERSIONS = ("HTTP/1.0", "HTTP/1.1")
# Where the host reaches itself, or its link: not the outside the list means.
_HOST_LOCAL = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "fe80::/10", "ff00::/8"))


class Refused(Exception):
    """An answer for the client: HTTP status and a line of text."""

    def __init__(self, status: int, reason: str, text: str) -> None:
        super().__init__(text)
        self.status, self.reason, self.text = status, reason, text


@dataclass(frozen=True)
class Request:
    host: str  # a name, or an IP address's text (no brackets)
    port: int
    tunnel: bool  # CONNECT; else an HTTP request to pass on
    head: bytes  # for a passed-on request: what the server gets


def _bad(text: str) -> Refused:
    return Refused(400, "Bad Request", text)


def _authority(text: str, default_port: int | None) -> tuple[str, int]:
    """host and port of `host:port`, `[v6]:port` or (with a default) `host`."""
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _bad(f"bad authority {text!r}")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise _bad(f"bad authority {text!r}")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not port_text:
        if default_port is None:
            raise _bad(f"CONNECT needs host:port, not {text!r}")
        return host, default_port
    if not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
        raise _bad(f"bad port in {text!r}")
    return host, int(port_text)


def parse_request(head: bytes) -> Request:
    """The proxy request in `head` (request line and headers, CRLF CRLF)."""
    lines = head.decode("latin-1").removesuffix("\r\n\r\n").split("\r\n")
    if any(_CONTROL.search(line) for line in lines):
        raise _bad("a control character (a bare CR or LF, say) in the request head")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in _VERSIONS:
        raise _bad("not an HTTP/1.0 or HTTP/1.1 proxy request")
    method, target, version = parts
    if method == "CONNECT":
        host, port = _authority(target, None)
        return Request(host, port, True, b"")
    if not target.lower().startswith("http://"):
        raise _bad("only CONNECT and http:// requests are proxied (https goes by CONNECT)")
    rest = target[len("http://"):]
    authority, slash, path = rest.partition("/")
    authority = authority.rpartition("@")[2]
    host, port = _authority(authority, 80)
    headers = [line for line in lines[1:]
               if line.split(":", 1)[0].strip().lower() not in NOT_PASSED_ON]
    # The server hears of the host the proxy checked and connects to, and
    # of one request: the connection closes after its answer.
    shown = f"[{host}]" if ":" in host else host
    out = [f"{method} {slash or '/'}{path} {version}",
           f"Host: {shown}" + (f":{port}" if port != 80 else ""), *headers,
           "Connection: close", "", ""]
    return Request(host, port, False, "\r\n".join(out).encode("latin-1"))


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def host_local(address: IPAddress) -> bool:
    address = unmapped(address)
    return any(address in net for net in _HOST_LOCAL)


def reachable(allow: AllowList, address: IPAddress, by_name: bool) -> bool:
    """Whether the proxy may connect to `address` (a listed name's, when
    `by_name`): a host-local one only inside a listed network that is
    itself host-local (`127.0.0.1`, not `0.0.0.0/0`)."""
    address = unmapped(address)
    if not host_local(address):
        return by_name or allow.allows_address(address)
    return any(address in net and any(_within(net, local) for local in _HOST_LOCAL)
               for net in allow.networks)


def _within(net: IPNetwork, outer: IPNetwork) -> bool:
    if isinstance(net, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return net.subnet_of(outer)
    if isinstance(net, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return net.subnet_of(outer)
    return False


class EgressProxy:
    """One per host agent: serves the guest streams of the proxy's port."""

    def __init__(self, allow: AllowList) -> None:
        self.allow = allow
        self.refused = 0
        self.passed = 0
        self.open = 0
        self._resolver: ThreadPoolExecutor | None = None

    def info(self) -> dict[str, object]:
        """For `roost info`: where the guest finds it, and what it did."""
        return {"guestAddr": f"127.0.0.1:{EGRESS_PROXY_PORT}", "passed": self.passed,
                "refused": self.refused, "open": self.open}

    async def serve(self, stream: TunnelStream) -> None:
        if self.open >= MAX_OPEN:
            await self._refuse(stream, Refused(503, "Service Unavailable",
                                               f"{MAX_OPEN} connections are open already"))
            return
        self.open += 1
        try:
            await self._serve(stream)
        except Exception as e:  # a bug: this connection is lost, the proxy goes on
            self._log_refusal(Refused(500, "Internal Server Error", f"{type(e).__name__}: {e}"))
            await stream.reset("the egress proxy failed")
        finally:
            self.open -= 1

    async def _serve(self, stream: TunnelStream) -> None:
        try:
            try:
                head, rest = await asyncio.wait_for(_read_head(stream), HEAD_SECONDS)
            except TimeoutError:
                raise Refused(408, "Request Timeout",
                              f"no request within {HEAD_SECONDS:g}s") from None
            request = parse_request(head)
            addresses = await self.destinations(request)
            reader, writer = await _connect(addresses, request.port, self.allow)
        except Refused as refusal:
            await self._refuse(stream, refusal)
            return
        except (StreamReset, GuestAgentError):
            return
        self.passed += 1
        log.debug("egress: %s port %d", request.host, request.port)
        try:
            if request.tunnel:
                await stream.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                writer.write(request.head)
            writer.write(rest)
            await writer.drain()
        except (StreamReset, GuestAgentError, OSError):
            writer.close()
            await stream.reset("done")
            return
        except BaseException:  # cancelled: the connection goes with it
            writer.close()
            raise
        await stream.splice(reader, writer)

    async def destinations(self, request: Request) -> list[IPAddress]:
        """The addresses to connect to, in order; Refused when none may be."""
        literal = _literal(request.host)
        if literal is not None:
            if not reachable(self.allow, literal, by_name=False):
                raise Refused(403, "Forbidden", f"{literal} is not in network.allowOut")
            return [literal]
        name = normal_name(request.host)
        if not is_host_name(name):
            raise _bad(f"{request.host!r} is not a host name")
        if not self.allow.allows_name(name):
            # Not looked up: the lookup itself would carry whatever the guest
            # put in the name to DNS servers outside.
            raise Refused(403, "Forbidden", f"{name} is not in network.allowOut")
        found: list[IPAddress] = []
        for info in await self._resolve(name, request.port):
            addr = ipaddress.ip_address(str(info[4][0]).partition("%")[0])
            if addr not in found:
                found.append(addr)
        allowed = [a for a in found if reachable(self.allow, a, by_name=True)]
        if not allowed:
            raise Refused(403, "Forbidden", f"{name} resolves only to the host's own "
                          f"addresses ({', '.join(map(str, found)) or 'none'}), which "
                          "network.allowOut does not list")
        return allowed

    async def _resolve(self, name: str, port: int) -> list[tuple[Any, ...]]:
        # A pool of its own: slow lookups of a wildcard's names must not
        # hold the default pool's threads, which the host agent needs.
        if self._resolver is None:
            self._resolver = ThreadPoolExecutor(RESOLVER_THREADS, "egress-resolve")
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.run_in_executor(
                self._resolver, socket.getaddrinfo, name, port, 0, socket.SOCK_STREAM),
                RESOLVE_SECONDS)
        except TimeoutError:
            raise Refused(504, "Gateway Timeout", f"no address for {name} within "
                          f"{RESOLVE_SECONDS:g}s") from None
        except OSError as e:
            raise Refused(502, "Bad Gateway", f"cannot resolve {name}: {e}") from None
        return list(infos)

    def close(self) -> None:
        if self._resolver is not None:
            self._resolver.shutdown(wait=False, cancel_futures=True)

    def _log_refusal(self, refusal: Refused) -> None:
        self.refused += 1
        if self.refused <= LOG_FIRST or self.refused % LOG_EVERY == 0:
            log.info("egress refused (%d so far): %d %s", self.refused, refusal.status,
                     refusal.text)

    async def _refuse(self, stream: TunnelStream, refusal: Refused) -> None:
        self._log_refusal(refusal)
        body = f"roost: {refusal.text}\n".encode()
        head = (f"HTTP/1.1 {refusal.status} {refusal.reason}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        with contextlib.suppress(StreamReset, GuestAgentError, OSError):
            await stream.send(head + body)
            await stream.send_eof()
            # Until the client has read it and closed (a reset could cut it).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_drain(stream), 10)
        await stream.reset("done")


async def _connect(addresses: list[IPAddress], port: int, allow: AllowList
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    last: OSError | Refused | None = None
    for addr in addresses:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(str(addr), port), CONNECT_SECONDS)
        except TimeoutError:
            last = OSError(f"timed out after {CONNECT_SECONDS:g}s")
            continue
        except OSError as e:
            last = e
            continue
        if _to_itself(writer) and not listed_itself(allow, addr):
            # One of the host's own interface addresses (inside a listed
            # 10.0.0.0/8, say): the host's services, not the network's.
            writer.close()
            last = Refused(403, "Forbidden", f"{addr} is this host's own address; "
                           "network.allowOut reaches it only when it lists it by itself")
            continue
        return reader, writer
    if isinstance(last, Refused):
        raise last
    raise Refused(502, "Bad Gateway", f"cannot connect to port {port} of "
                  f"{', '.join(map(str, addresses))}: {last}")


def _to_itself(writer: asyncio.StreamWriter) -> bool:
    """Whether the connection is from this host to itself (its source
    address is its destination's: the kernel's choice for a local one)."""
    sock = writer.get_extra_info("socket")
    try:
        mine = ipaddress.ip_address(str(sock.getsockname()[0]).partition("%")[0])
        theirs = ipaddress.ip_address(str(sock.getpeername()[0]).partition("%")[0])
    except (OSError, ValueError, AttributeError):
        return True  # cannot tell: taken as the host's
    return mine == theirs


def listed_itself(allow: AllowList, address: IPAddress) -> bool:
    """Whether the list names `address` alone (a /32 or /128 entry), or a
    host-local network holding it (127.0.0.0/8)."""
    address = unmapped(address)
    return any(address in net and (net.num_addresses == 1 or any(
        _within(net, local) for local in _HOST_LOCAL)) for net in allow.networks)


async def _read_head(stream: TunnelStream) -> tuple[bytes, bytes]:
    """The request head and the bytes after it (acknowledged as read)."""
    buf = b""
    while True:
        chunk = await stream.recv()
        if chunk is None:
            raise _bad("the connection ended before the request did")
        await stream.ack(len(chunk))
        searched = max(0, len(buf) - 3)  # the end may straddle two chunks
        buf += chunk
        end = buf.find(b"\r\n\r\n", searched)
        if end >= 0 and end + 4 <= MAX_HEAD:
            return buf[:end + 4], buf[end + 4:]
        if end >= 0 or len(buf) > MAX_HEAD:
            raise Refused(431, "Request Header Fields Too Large",
                          f"the request head is over {MAX_HEAD} bytes")


async def _drain(stream: TunnelStream) -> None:
    while (chunk := await stream.recv()) is not None:
        await stream.ack(len(chunk))
