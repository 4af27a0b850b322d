"""A DNS query made in the guest, by hand (no resolver library: what goes
on the wire is what the test says): `python3 - NAME SERVER PORT udp|tcp
[COUNT]` prints {"rcode": N, "a": [...]} as JSON; with COUNT, sends that
many queries for NAME-0 ... at once (UDP) and prints how many were
answered, by rcode. Run through `roost shell ... python3 -` with this text
on stdin."""

from __future__ import annotations

import json
import random
import socket
import struct
import sys


def question(name: str) -> bytes:
    qid = random.randrange(65536)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p)
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + \
        struct.pack("!HH", 1, 1)


def skip_name(msg: bytes, i: int) -> int:
    while msg[i]:
        if msg[i] & 0xC0 == 0xC0:
            return i + 2
        i += msg[i] + 1
    return i + 1


def a_records(msg: bytes) -> dict[str, object]:
    qd, an = struct.unpack("!HH", msg[4:8])
    i = 12
    for _ in range(qd):
        i = skip_name(msg, i) + 4
    addrs = []
    for _ in range(an):
        i = skip_name(msg, i)
        rtype, _, _, n = struct.unpack("!HHIH", msg[i:i + 10])
        i += 10
        if rtype == 1:
            addrs.append(socket.inet_ntoa(msg[i:i + 4]))
        i += n
    return {"rcode": msg[3] & 0xF, "a": sorted(addrs)}


def ask(name: str, server: str, port: int, proto: str) -> dict[str, object]:
    q = question(name)
    if proto == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(10)
        s.sendto(q, (server, port))
        return a_records(s.recv(65535))
    s = socket.create_connection((server, port), 10)
    s.sendall(struct.pack("!H", len(q)) + q)
    head = b""
    while len(head) < 2:
        head += s.recv(2 - len(head))
    n = struct.unpack("!H", head)[0]
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    return a_records(body)


def flood(name: str, server: str, port: int, count: int) -> dict[str, object]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    for n in range(count):
        s.sendto(question(f"{name}-{n}"), (server, port))
    s.settimeout(5)
    rcodes: dict[str, int] = {}
    try:
        while True:
            rcode = str(s.recv(65535)[3] & 0xF)
            rcodes[rcode] = rcodes.get(rcode, 0) + 1
    except TimeoutError:
        pass
    return {"answered": rcodes}


if __name__ == "__main__":
    name, server, port, proto = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if len(sys.argv) > 5:
        print(json.dumps(flood(name, server, port, int(sys.argv[5]))))
    else:
        print(json.dumps(ask(name, server, port, proto)))
