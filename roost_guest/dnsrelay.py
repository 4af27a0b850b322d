"""hostResolver on an image without netfilter (the built-in one): a DNS
relay on the guest's loopback, port 53, UDP and TCP, to roost's DNS server
on the host (as the gateway reaches it). Cloud images redirect instead
(roost-dns, a DNAT); this image's resolv.conf names the relay first and
slirp's DNS second, so a query made before the relay serves still gets an
answer (a closed UDP port is refused at once, with no resolver timeout).

Standard library only. UDP on one thread (answers matched by ids of its
own), TCP a thread per connection, each bounded: a program in the guest
can flood it, and only slows its own DNS.
"""

import os
import select
import struct
import threading
import time

from roost_guest import lightsocket as socket

TYPE_CHECKING = False  # typing costs boot time under TCG: annotations are strings
if TYPE_CHECKING:
    from typing import Callable, Dict, Optional, Tuple

    Log = Callable[[str], None]

LISTEN = ("127.0.0.1", 53)
UPSTREAM_TIMEOUT = 5.0  # s, for one answer
TCP_IDLE = 10.0  # s
MAX_AT_ONCE = 32  # TCP connections relayed at once; more are closed
MAX_PENDING = 1024  # UDP queries awaiting their answer; more are dropped


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

    def move(self, port: int) -> None:
        """Ask roost's server at another port from now on (a restored guest,
        whose host agent serves elsewhere): queries still unanswered by the
        old one are dropped, and their clients ask again."""
        self.upstream = (self.upstream[0], port)

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

    def _spawn(self, target: "Callable[..., None]", conn: socket.socket) -> None:
        if not self.slots.acquire(blocking=False):
            conn.close()
            return  # the client asks again

        def run() -> None:
            try:
                target(conn)
            except OSError:
                pass
            finally:
                self.slots.release()

        threading.Thread(target=run, daemon=True).start()

    def _serve_udp(self) -> None:
        """One thread, one upstream socket: each query goes up under an id
        of the relay's own (clients' ids may collide), and its answer back
        to its client with the client's id. A thread and a socket per query
        cost 4 ms a lookup under TCG; this costs a dictionary entry."""
        # Connected on the first query: the agent may serve before the
        # guest has a route to the host (a query before then is dropped,
        # and the client asks again or asks slirp's DNS).
        up: "Optional[socket.socket]" = None
        up_to = self.upstream
        pending: "Dict[int, Tuple[Tuple[str, int], bytes, float]]" = {}
        next_id = int.from_bytes(os.urandom(2), "big")
        swept = time.monotonic()
        while True:
            try:
                ready, _, _ = select.select([self.udp] if up is None else [self.udp, up],
                                            [], [], 1.0)
                now = time.monotonic()
                if self.udp in ready:
                    packet, client = self.udp.recvfrom(65535)
                    if up is not None and up_to != self.upstream:
                        up.close()  # moved (move()): its pending answers are lost
                        up, pending = None, {}
                    if up is None:
                        up_to = self.upstream
                        up = self._upstream_udp(up_to)
                    if len(packet) >= 12 and len(pending) < MAX_PENDING:
                        while next_id in pending:
                            next_id = (next_id + 1) & 0xFFFF
                        pending[next_id] = (client, packet[:2], now)
                        up.send(struct.pack("!H", next_id) + packet[2:])
                        next_id = (next_id + 1) & 0xFFFF
                if up is not None and up in ready:
                    reply = up.recv(65535)
                    entry = pending.pop(struct.unpack("!H", reply[:2])[0], None) \
                        if len(reply) >= 12 else None
                    if entry is not None:
                        self.udp.sendto(entry[1] + reply[2:], entry[0])
                if now - swept > 1.0:  # queries never answered: forgotten
                    swept = now
                    for rid in [k for k, v in pending.items() if now - v[2] > UPSTREAM_TIMEOUT]:
                        del pending[rid]
            except (OSError, ValueError) as e:  # ValueError: select on a closed socket
                if self.udp.fileno() < 0:
                    return  # closed
                self.log("dns relay: %s" % e)  # e.g. the host refused: the client asks again
                time.sleep(0.05)

    def _upstream_udp(self, upstream: "Tuple[str, int]") -> socket.socket:
        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            up.connect(upstream)
        except OSError:
            up.close()
            raise
        return up

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
