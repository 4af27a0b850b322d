"""hostResolver on the built-in image (the shared instance): the guest's
resolver goes through the guest agent's relay to the host agent's DNS
server. The same on a cloud image, by a DNAT: tests/e2e/test_debian.py."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from tests.e2e.conftest import Roost
from tests.e2e.hostdns import (
    HOST_ADDRESS,
    HOSTS_ADDRESS,
    HOSTS_NAME,
    guest_getent,
    guest_query,
    host_only_name,
    resolver_port,
)


def test_the_guest_resolves_as_the_host_does(roost: Roost, vm: str) -> None:
    assert guest_getent(roost, vm, "host.roost.internal") == [HOST_ADDRESS]
    assert guest_getent(roost, vm, HOSTS_NAME) == [HOSTS_ADDRESS]
    name, want = host_only_name()
    assert guest_getent(roost, vm, name) == want
    assert guest_getent(roost, vm, "no-such-name.invalid") == []
    # Over both transports, through the relay the guest's resolv.conf names.
    for proto in ("udp", "tcp"):
        assert guest_query(roost, vm, HOSTS_NAME, "127.0.0.1", "53", proto) == {
            "rcode": 0, "a": [HOSTS_ADDRESS]}


def test_a_guest_flooding_the_dns_server_slows_only_its_own_dns(roost: Roost, vm: str) -> None:
    """Guest root sends 3000 queries at once straight to the host's server
    (past the relay). The host agent answers its API meanwhile; what the
    server answers is an answer or REFUSED (the bound on lookups at once),
    nothing queued without bound; and DNS works right after."""
    port = str(resolver_port(roost, vm))
    with ThreadPoolExecutor(1) as pool:
        flooding = pool.submit(guest_query, roost, vm, "flood.invalid", HOST_ADDRESS, port,
                               "udp", "3000")
        time.sleep(2)  # the shell is up and the queries on their way
        start = time.monotonic()
        roost.run("info", vm, "--json", timeout=30)
        info_took = time.monotonic() - start
        answered = flooding.result()["answered"]
    # NXDOMAIN from the host's resolver, SERVFAIL where it gave up (its
    # upstream flooded in turn), REFUSED past the bound. UDP under a flood
    # loses datagrams on the way (slirp, socket buffers): no count of those.
    assert set(answered) <= {"2", "3", "5"}, answered
    assert answered.get("5", 0) > 0, f"the bound was never reached: {answered}"
    assert info_took < 5, f"roost info took {info_took:.1f}s during the flood"
    assert guest_query(roost, vm, "host.roost.internal", "127.0.0.1", "53", "udp") == {
        "rcode": 0, "a": [HOST_ADDRESS]}
