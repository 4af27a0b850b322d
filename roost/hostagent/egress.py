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
Guest root gains nothing by talking to the proxy directly: the checks are
the same for every byte it sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from dataclasses import dataclass

from roost.cidata.proxyenv import EGRESS_PROXY_PORT
from roost.config.allowout import AllowList, IPAddress, is_host_name, normal_name
from roost.hostagent.guestagent import GuestAgentError, StreamReset, TunnelStream

log = logging.getLogger("roost.hostagent")

MAX_HEAD = 16 << 10  # bytes of request line and headers
HEAD_SECONDS = 30.0  # for the client to send its request
CONNECT_SECONDS = 15.0
LOG_FIRST = 20  # refusals logged one by one; then every LOG_EVERY-th
LOG_EVERY = 100

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization",
              "proxy-authenticate", "te", "trailer", "upgrade"}


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


def _authority(text: str, default_port: int | None) -> tuple[str, int]:
    """host and port of `host:port`, `[v6]:port` or (with a default) `host`."""
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise Refused(400, "Bad Request", f"bad authority {text!r}")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise Refused(400, "Bad Request", f"bad authority {text!r}")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not port_text:
        if default_port is None:
            raise Refused(400, "Bad Request", f"CONNECT needs host:port, not {text!r}")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise Refused(400, "Bad Request", f"bad port in {text!r}")
    return host, int(port_text)


def parse_request(head: bytes) -> Request:
    """The proxy request in `head` (request line and headers, CRLF CRLF)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # latin-1 decodes anything; kept for clarity
        raise Refused(400, "Bad Request", "not an HTTP request") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise Refused(400, "Bad Request", "not an HTTP/1.x proxy request")
    method, target, version = parts
    if method == "CONNECT":
        host, port = _authority(target, None)
        return Request(host, port, True, b"")
    if not target.lower().startswith("http://"):
        raise Refused(400, "Bad Request",
                      "only CONNECT and http:// requests are proxied (https goes by CONNECT)")
    rest = target[len("http://"):]
    authority, slash, path = rest.partition("/")
    authority = authority.rpartition("@")[2]
    host, port = _authority(authority, 80)
    headers = [line for line in lines[1:] if line
               and line.split(":", 1)[0].strip().lower() not in HOP_BY_HOP]
    # One request per connection: the next may be for another host.
    out = [f"{method} {slash or '/'}{path} {version}", *headers, "Connection: close", "", ""]
    return Request(host, port, False, "\r\n".join(out).encode("latin-1"))


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def destinations(request: Request, allow: AllowList) -> list[IPAddress]:
    """The addresses to connect to, in order; Refused when none is allowed."""
    literal = _literal(request.host)
    if literal is not None:
        if not allow.allows_address(literal):
            raise Refused(403, "Forbidden", f"{literal} is not in network.allowOut")
        return [literal]
    name = normal_name(request.host)
    if not is_host_name(name):
        raise Refused(400, "Bad Request", f"{request.host!r} is not a host name")
    if not allow.allows_name(name):
        # Not looked up: the lookup itself would carry whatever the guest
        # put in the name to DNS servers outside.
        raise Refused(403, "Forbidden", f"{name} is not in network.allowOut")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            name, request.port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise Refused(502, "Bad Gateway", f"cannot resolve {name}: {e}") from None
    found: list[IPAddress] = []
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).partition("%")[0])
        if addr not in found:
            found.append(addr)
    if not found:
        raise Refused(502, "Bad Gateway", f"{name} has no address")
    return found


async def _connect(addresses: list[IPAddress], port: int
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    last: OSError | None = None
    for addr in addresses:
        try:
            return await asyncio.wait_for(asyncio.open_connection(str(addr), port),
                                          CONNECT_SECONDS)
        except (TimeoutError, OSError) as e:
            last = e if isinstance(e, OSError) else OSError(f"timed out after "
                                                             f"{CONNECT_SECONDS:g}s")
    raise Refused(502, "Bad Gateway", f"cannot connect to port {port} of "
                  f"{', '.join(map(str, addresses))}: {last}")


async def _read_head(stream: TunnelStream) -> tuple[bytes, bytes]:
    """The request head and the bytes after it (acknowledged as read)."""
    buf = b""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            return buf[:end + 4], buf[end + 4:]
        if len(buf) > MAX_HEAD:
            raise Refused(431, "Request Header Fields Too Large",
                          f"the request head is over {MAX_HEAD} bytes")
        chunk = await stream.recv()
        if chunk is None:
            raise Refused(400, "Bad Request", "the connection ended before the request did")
        await stream.ack(len(chunk))
        buf += chunk


class EgressProxy:
    """One per host agent: serves the guest streams of the proxy's port."""

    def __init__(self, allow: AllowList) -> None:
        self.allow = allow
        self.refused = 0
        self.passed = 0

    def info(self) -> dict[str, object]:
        """For `roost info`: where the guest finds it, and what it did."""
        return {"guestAddr": f"127.0.0.1:{EGRESS_PROXY_PORT}", "passed": self.passed,
                "refused": self.refused}

    async def serve(self, stream: TunnelStream) -> None:
        try:
            try:
                head, rest = await asyncio.wait_for(_read_head(stream), HEAD_SECONDS)
                request = parse_request(head)
                addresses = await destinations(request, self.allow)
                reader, writer = await _connect(addresses, request.port)
            except TimeoutError:
                raise Refused(408, "Request Timeout",
                              f"no request within {HEAD_SECONDS:g}s") from None
        except Refused as refusal:
            self._log_refusal(refusal)
            await self._answer(stream, refusal)
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
        await stream.splice(reader, writer)

    def _log_refusal(self, refusal: Refused) -> None:
        self.refused += 1
        if self.refused <= LOG_FIRST or self.refused % LOG_EVERY == 0:
            log.info("egress refused (%d so far): %d %s", self.refused, refusal.status,
                     refusal.text)

    async def _answer(self, stream: TunnelStream, refusal: Refused) -> None:
        body = f"roost: {refusal.text}\n".encode()
        head = (f"HTTP/1.1 {refusal.status} {refusal.reason}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        with contextlib.suppress(StreamReset, GuestAgentError, OSError):
            await stream.send(head + body)
            await stream.send_eof()
            # Until the client has read it and closed (a reset could cut it).
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(_drain(stream), 10)
        await stream.reset("done")


async def _drain(stream: TunnelStream) -> None:
    while (chunk := await stream.recv()) is not None:
        await stream.ack(len(chunk))
