"""hostResolver as the guest sees it: queries made in the guest by
tests/e2e/dnsquery.py, and what the host's resolver says of a name that
only the host knows (its own host name, from its /etc/hosts or nsswitch)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Roost

QUERY = (Path(__file__).parent / "dnsquery.py").read_text()
HOST_ADDRESS = "192.168.5.2"
# In each shared instance's roost.yaml (hostResolver.hosts).
HOSTS_NAME, HOSTS_ADDRESS = "e2e-db.test", "10.11.12.13"


def guest_query(roost: Roost, name: str, *args: str) -> dict[str, Any]:
    """dnsquery.py's JSON for `args` (NAME SERVER PORT PROTO [COUNT]), run in
    instance `name` as its user."""
    out = roost.run("shell", name, "--", "python3", "-", *args, input=QUERY, timeout=120)
    return dict(json.loads(out.stdout))


def guest_getent(roost: Roost, name: str, host: str) -> list[str]:
    """The addresses the guest's own resolver (glibc, resolv.conf) gives."""
    out = roost.run("shell", name, "--", "getent", "ahostsv4", host, check=False)
    return sorted({line.split()[0] for line in out.stdout.splitlines() if line.strip()})


def host_only_name() -> tuple[str, list[str]]:
    """The host's own name and what hostResolver answers for it: what the
    host resolves, its loopback as the host's address in the guest."""
    name = socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET)
    except socket.gaierror as e:
        raise AssertionError(f"the host cannot resolve its own name {name!r} ({e}): "
                             "this test needs it in the host's /etc/hosts") from None
    addrs = {str(i[4][0]) for i in infos}
    return name, sorted({HOST_ADDRESS if a.startswith("127.") else a for a in addrs})


def resolver_port(roost: Roost, name: str) -> int:
    info = json.loads(roost.run("info", name, "--json").stdout)
    port = ((info.get("hostagent") or {}).get("hostResolver") or {}).get("port")
    assert isinstance(port, int) and port > 0, f"no hostResolver port in info: {info}"
    return port


@contextlib.contextmanager
def stand_in_resolver(address: str) -> Iterator[int]:
    """A DNS server on the host's loopback (UDP) that answers every A
    question with `address`; yields its port."""
    from dnslib import QTYPE, RR, A, DNSRecord  # type: ignore[import-untyped]

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                packet, client = sock.recvfrom(4096)
                query = DNSRecord.parse(packet)
            except (TimeoutError, OSError, ValueError):
                continue
            reply = query.reply()
            if query.q.qtype == QTYPE.A:
                reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(address), ttl=0))
            sock.sendto(reply.pack(), client)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        done.set()
        thread.join()
        sock.close()
