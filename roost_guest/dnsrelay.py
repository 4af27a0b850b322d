"""hostResolver on an image without netfilter (the built-in one): a DNS
relay on the guest's loopback, port 53, UDP and TCP, to roost's DNS server
on the host (as the gateway reaches it). Cloud images redirect instead
(roost-dns, a DNAT); this image's resolv.conf names the relay first and
slirp's DNS second, so a query made before the relay serves still gets an
answer (a closed UDP port is refused at once, with no resolver timeout).

Standard library only; a thread per query or connection, a fixed number at
once: a program in the guest can flood it, and only slows its own DNS.
"""

import socket
import struct
import threading

TYPE_CHECKING = False  # typing costs boot time under TCG: annotations are strings
if TYPE_CHECKING:
    from typing import Callable, Optional, Tuple

    Log = Callable[[str], None]

LISTEN = ("127.0.0.1", 53)
UPSTREAM_TIMEOUT = 5.0  # s, for one answer
TCP_IDLE = 10.0  # s
MAX_AT_ONCE = 32  # queries and TCP connections relayed at once; more are dropped


def parse_upstream(value: str) -> "Tuple[str, int]":
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("--dns-relay needs HOST:PORT, got %r" % value)
    return host, int(port)


class Relay:
    def __init__(self, upstream: "Tuple[str, int]", log: "Log",
                 listen: "Tuple[str, int]" = LISTEN) -> None:
        self.upstream = upstream
        self.log = log
        self.listen = listen
        self.slots = threading.BoundedSemaphore(MAX_AT_ONCE)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    def start(self) -> bool:
        """Bind and serve on daemon threads; False (logged) if it cannot bind."""
        try:
            self.udp.bind(self.listen)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.tcp.bind(self.listen)
            self.tcp.listen(16)
        except OSError as e:
            self.log("dns relay: cannot listen on %s:%d: %s" % (self.listen[0], self.listen[1], e))
            self.udp.close()
            self.tcp.close()
            return False
        for target in (self._serve_udp, self._serve_tcp):
            threading.Thread(target=target, daemon=True).start()
        return True

    def _spawn(self, target: "Callable[..., None]", *args: object) -> None:
        if not self.slots.acquire(blocking=False):
            if isinstance(args[0], socket.socket):
                args[0].close()
            return  # dropped: the client asks again

        def run() -> None:
            try:
                target(*args)
            except OSError:
                pass
            finally:
                self.slots.release()

        threading.Thread(target=run, daemon=True).start()

    def _serve_udp(self) -> None:
        while True:
            try:
                packet, client = self.udp.recvfrom(65535)
            except OSError:
                return
            self._spawn(self._relay_udp, packet, client)

    def _relay_udp(self, packet: bytes, client: "Tuple[str, int]") -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.settimeout(UPSTREAM_TIMEOUT)
            up.connect(self.upstream)
            up.send(packet)
            while True:
                reply = up.recv(65535)
                if reply[:2] == packet[:2]:  # its answer, not a stray datagram
                    self.udp.sendto(reply, client)
                    return

    def _serve_tcp(self) -> None:
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            self._spawn(self._relay_tcp, conn)

    def _relay_tcp(self, conn: socket.socket) -> None:
        with conn, socket.create_connection(self.upstream, UPSTREAM_TIMEOUT) as up:
            conn.settimeout(TCP_IDLE)
            up.settimeout(UPSTREAM_TIMEOUT)
            while True:  # one length-prefixed query, then its answer
                query = _read_message(conn)
                if query is None:
                    return
                up.sendall(query)
                answer = _read_message(up)
                if answer is None:
                    return
                conn.sendall(answer)


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return b""
        data += chunk
    return data


def _read_message(sock: socket.socket) -> "Optional[bytes]":
    """One DNS-over-TCP message with its 2-byte length; None at EOF."""
    head = _read_exactly(sock, 2)
    if not head:
        return None
    body = _read_exactly(sock, struct.unpack("!H", head)[0])
    if not body and head != b"\0\0":
        return None
    return head + body
