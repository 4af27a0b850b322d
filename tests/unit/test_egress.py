"""network.allowOut: the list's forms, the proxy requests the host agent
reads, and the whole path on this host: a client connects to the real guest
agent's loopback listener, the stream comes to the host side's egress proxy,
which lets through only what the list names. The requests are what guest
root may send: anything."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import ipaddress
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from roost.cidata.proxyenv import egress_proxy_env
from roost.config.allowout import AllowList
from roost.driver.channel import UnixDialer
from roost.hostagent import egress as egress_module
from roost.hostagent.egress import MAX_HEAD, EgressProxy, Refused, parse_request, reachable
from roost.hostagent.guestagent import GuestAgentClient, GuestAgentError
from roost.hostagent.portfwd.manager import serve_reverse
from tests.unit.guest_agent_process import guest_agent_on


def test_the_list_takes_names_wildcards_addresses_and_cidrs() -> None:
    allow = AllowList.parse(["Example.COM.", "*.pypi.org", "10.0.0.0/8", "192.0.2.7",
                             "2001:db8::/32"])
    assert allow.allows_name("example.com") and allow.allows_name("EXAMPLE.com.")
    assert not allow.allows_name("www.example.com")  # a name is that name only
    assert allow.allows_name("files.pypi.org") and allow.allows_name("a.b.pypi.org")
    assert not allow.allows_name("pypi.org")  # *. is the subdomains
    assert not allow.allows_name("evilpypi.org")
    for ok in ("10.1.2.3", "192.0.2.7", "2001:db8::1", "::ffff:10.9.9.9"):
        assert allow.allows_address(ipaddress.ip_address(ok)), ok
    for no in ("11.0.0.1", "192.0.2.8", "2001:db9::1", "127.0.0.1"):
        assert not allow.allows_address(ipaddress.ip_address(no)), no
    for bad in ("bad name", "*", "*.", "-x.com", "10.0.0.0/33", "http://example.com", "1.2.3"):
        with pytest.raises(ValueError, match="is not a host name"):
            AllowList.parse([bad])


def test_a_connect_and_an_http_request_are_read() -> None:
    r = parse_request(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert (r.host, r.port, r.tunnel) == ("example.com", 443, True)
    r = parse_request(b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\n\r\n")
    assert (r.host, r.port) == ("2001:db8::1", 8443)
    r = parse_request(b"GET http://user@deb.debian.org/debian/dists HTTP/1.1\r\n"
                      b"Host: deb.debian.org\r\nProxy-Connection: keep-alive\r\n"
                      b"Connection: keep-alive\r\nAccept: */*\r\n\r\n")
    assert (r.host, r.port, r.tunnel) == ("deb.debian.org", 80, False)
    assert r.head == (b"GET /debian/dists HTTP/1.1\r\nHost: deb.debian.org\r\nAccept: */*\r\n"
                      b"Connection: close\r\n\r\n")
    assert parse_request(b"GET http://h:8080 HTTP/1.0\r\n\r\n").head.startswith(
        b"GET / HTTP/1.0\r\n")
    for bad in (b"CONNECT example.com HTTP/1.1\r\n\r\n", b"GET https://x/ HTTP/1.1\r\n\r\n",
                b"GET /relative HTTP/1.1\r\n\r\n", b"\x16\x03\x01 tls\r\n\r\n",
                b"CONNECT a:99999 HTTP/1.1\r\n\r\n", b"CONNECT [::1:80 HTTP/1.1\r\n\r\n"):
        with pytest.raises(Refused) as refused:
            parse_request(bad)
        assert refused.value.status == 400, bad


def test_the_guest_is_told_to_use_the_proxy_but_not_for_itself() -> None:
    env = egress_proxy_env()
    assert env["https_proxy"] == env["HTTP_PROXY"] == "http://127.0.0.1:3128"
    assert "127.0.0.1" in env["no_proxy"].split(",")


def _server(host: str) -> tuple[socket.socket, int]:
    """A TCP server on `host` that says which address it is, then echoes."""
    srv = socket.socket()
    srv.bind((host, 0))
    srv.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(f"at {host}\n".encode())
                while data := conn.recv(65536):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, int]]:
    allowed, allowed_port = _server("127.0.0.1")
    denied, denied_port = _server("127.0.0.2")  # loopback too: any 127/8 address is local
    yield {"allowed": allowed_port, "denied": denied_port}
    allowed.close()
    denied.close()


@pytest.fixture(scope="module")
def agent_sock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = str(tmp_path_factory.mktemp("ga") / "ga.sock")
    with guest_agent_on(path):
        yield path


@pytest.fixture
async def proxy(agent_sock: str) -> AsyncIterator[tuple[int, EgressProxy]]:
    """The guest agent's listener (on a free port of this host) served by an
    egress proxy that allows 127.0.0.1, ::1 and the name localhost."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    egress = EgressProxy(AllowList.parse(["127.0.0.1", "::1", "localhost"]))
    client = GuestAgentClient(UnixDialer(agent_sock))
    await client.connect()
    task = asyncio.ensure_future(serve_reverse(client, {}, lambda e: None, None,
                                               {port: egress.serve}))
    for _ in range(100):  # until the guest agent listens
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        await asyncio.sleep(0.02)
    yield port, egress
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    await client.close()


def _ask(port: int, request: bytes, then: bytes = b"") -> bytes:
    """What the proxy sends back to a client sending `request` (then `then`
    once answered), until it closes or 2 s pass quietly."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        got = s.recv(65536)
        if then:
            s.sendall(then)
        s.settimeout(2)
        with contextlib.suppress(TimeoutError):
            while data := s.recv(65536):
                got += data
                if then and got.endswith(then):
                    break
    return got


async def test_an_allowed_address_is_tunnelled_and_others_refused(
        proxy: tuple[int, EgressProxy], servers: dict[str, int]) -> None:
    port, egress = proxy
    ok = await asyncio.to_thread(
        _ask, port, f"CONNECT 127.0.0.1:{servers['allowed']} HTTP/1.1\r\n\r\n".encode(),
        b"ping through")
    assert ok.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nat 127.0.0.1\n"), ok
    assert ok.endswith(b"ping through")
    denied = await asyncio.to_thread(
        _ask, port, f"CONNECT 127.0.0.2:{servers['denied']} HTTP/1.1\r\n\r\n".encode())
    assert denied.startswith(b"HTTP/1.1 403 Forbidden"), denied
    assert b"127.0.0.2 is not in network.allowOut" in denied and b"at 127.0.0.2" not in denied
    # A name that resolves to an allowed address (Debian's hosts file: ::1)
    # is not allowed by it: names are allowed by name, and an unlisted one is
    # not even looked up.
    by_name = await asyncio.to_thread(
        _ask, port, f"CONNECT ip6-localhost:{servers['allowed']} HTTP/1.1\r\n\r\n".encode())
    assert by_name.startswith(b"HTTP/1.1 403"), by_name
    assert b"ip6-localhost is not in network.allowOut" in by_name
    assert egress.refused >= 2 and egress.passed >= 1


async def test_a_listed_name_is_resolved_by_the_host(
        proxy: tuple[int, EgressProxy], servers: dict[str, int]) -> None:
    # localhost is ::1 and 127.0.0.1 here: the server is on the second.
    port, _ = proxy
    got = await asyncio.to_thread(
        _ask, port, f"CONNECT LocalHost.:{servers['allowed']} HTTP/1.1\r\n\r\n".encode())
    assert got.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nat 127.0.0.1"), got


async def test_an_http_request_is_passed_on_in_origin_form(
        proxy: tuple[int, EgressProxy], tmp_path: Path) -> None:
    seen: list[tuple[str, str | None]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Connection")))
            body = b"served"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port, _ = proxy
        got = await asyncio.to_thread(
            _ask, port, f"GET http://127.0.0.1:{server.server_port}/a/b?c=d HTTP/1.1\r\n"
                        f"Host: 127.0.0.1\r\nProxy-Connection: keep-alive\r\n\r\n".encode())
        assert got.startswith(b"HTTP/1.0 200") and got.endswith(b"served"), got
        assert seen == [("/a/b?c=d", "close")]
    finally:
        server.shutdown()
        server.server_close()


async def test_what_guest_root_may_send_instead(proxy: tuple[int, EgressProxy],
                                                servers: dict[str, int]) -> None:
    port, _ = proxy
    huge = b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n" % servers["allowed"] + b"X: " + b"a" * MAX_HEAD
    got = await asyncio.to_thread(_ask, port, huge)
    assert got.startswith(b"HTTP/1.1 431"), got[:80]
    for junk in (b"\x16\x03\x01\x02\x00 not http\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n",
                 b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n"):
        got = await asyncio.to_thread(_ask, port, junk)
        assert got.split(b" ")[1] in (b"400", b"502"), (junk, got)
    # A client that leaves mid-request, and the proxy still serves the next.
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"CONNECT 127.0.0.1:")
    ok = await asyncio.to_thread(
        _ask, port, f"CONNECT 127.0.0.1:{servers['allowed']} HTTP/1.1\r\n\r\n".encode())
    assert ok.startswith(b"HTTP/1.1 200"), ok


async def test_the_guest_agent_listens_only_on_a_port_it_is_given(agent_sock: str) -> None:
    client = GuestAgentClient(UnixDialer(agent_sock))
    await client.connect()
    try:
        for bad in ("3128", 0, 65536, True, None):
            with pytest.raises(GuestAgentError, match="tcp needs a port number"):
                await client.request("listen", tcp=bad)
    finally:
        await client.close()


def test_the_sdk_sets_the_list_and_gives_its_commands_the_proxy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from roost.sdk.sandbox import _configured_env, _creation_sets
    from roost.store.instance import Instance

    sets = _creation_sets(None, None, "delete", True, True, None, ["pypi.org", "10.0.0.0/8"], [])
    assert 'network.allowOut=["pypi.org", "10.0.0.0/8"]' in sets
    assert "network.internet=false" in sets  # the list is the exception to being cut off
    monkeypatch.setenv("ROOST_HOME", str(tmp_path))
    inst = Instance.at("sb")
    inst.dir.mkdir(parents=True)
    inst.config.write_text("network:\n  internet: false\n  allowOut: [pypi.org]\n"
                           "env:\n  no_proxy: pypi.org\n")
    env = _configured_env(inst)
    assert env["https_proxy"] == "http://127.0.0.1:3128"
    assert env["no_proxy"] == "pypi.org"  # roost.yaml's env has the last word, as for logins


def test_what_a_request_head_may_not_hide() -> None:
    for bad in (b"CONNECT a.com:\xb2 HTTP/1.1\r\n\r\n",  # latin-1 superscript two: a "digit"
                b"GET http://a.com/ HTTP/1.1\nHost: evil\r\n\r\n",  # a bare LF
                b"GET http://a.com/ HTTP/1.1\r\nX: a\x00b\r\n\r\n",
                b"GET http://a.com/ HTTP/1.10\r\n\r\n", b"CONNECT a.com:443 HTTP/2\r\n\r\n"):
        with pytest.raises(Refused) as refused:
            parse_request(bad)
        assert refused.value.status == 400, bad
    # The server hears of the host the proxy checked, whatever Host said.
    r = parse_request(b"GET http://a.com:8080/x HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    assert r.head == b"GET /x HTTP/1.1\r\nHost: a.com:8080\r\nConnection: close\r\n\r\n"
    assert b"evil" not in parse_request(
        b"GET http://[::1]/ HTTP/1.1\r\nhost: evil\r\n\r\n").head


def test_the_host_itself_is_reached_only_through_an_entry_within_it() -> None:
    broad = AllowList.parse(["0.0.0.0/0", "::/0"])
    for local in ("127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", "0.0.0.0",
                  "169.254.169.254", "fe80::1", "224.0.0.1"):
        assert not reachable(broad, ipaddress.ip_address(local), by_name=False), local
    assert reachable(broad, ipaddress.ip_address("203.0.113.9"), by_name=False)
    narrow = AllowList.parse(["127.0.0.1"])
    assert reachable(narrow, ipaddress.ip_address("127.0.0.1"), by_name=False)
    assert reachable(narrow, ipaddress.ip_address("::ffff:127.0.0.1"), by_name=True)
    assert not reachable(narrow, ipaddress.ip_address("127.0.0.2"), by_name=False)
    assert not reachable(AllowList.parse([]), ipaddress.ip_address("127.0.0.1"), by_name=True)
    assert reachable(AllowList.parse([]), ipaddress.ip_address("203.0.113.9"), by_name=True)


async def test_a_listed_name_that_is_the_host_itself_is_refused() -> None:
    egress = EgressProxy(AllowList.parse(["localhost"]))
    try:
        with pytest.raises(Refused, match="resolves only to the host's own addresses"):
            await egress.destinations(parse_request(b"CONNECT localhost:22 HTTP/1.1\r\n\r\n"))
    finally:
        egress.close()


async def test_connections_past_the_cap_are_turned_away(
        proxy: tuple[int, EgressProxy], servers: dict[str, int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    port, _ = proxy
    monkeypatch.setattr(egress_module, "MAX_OPEN", 0)
    got = await asyncio.to_thread(
        _ask, port, f"CONNECT 127.0.0.1:{servers['allowed']} HTTP/1.1\r\n\r\n".encode())
    assert got.startswith(b"HTTP/1.1 503"), got


async def test_listening_again_on_the_same_port_replaces_the_listener(agent_sock: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = GuestAgentClient(UnixDialer(agent_sock))
    await client.connect()
    try:
        assert await client.request("listen", tcp=port) == {"tcp": port}
        assert await client.request("listen", tcp=port) == {"tcp": port}
    finally:
        await client.close()


async def test_the_hosts_own_address_inside_a_listed_network_is_not_the_network(
        agent_sock: str) -> None:
    """A listed 0.0.0.0/0 (or the LAN's 10.0.0.0/8) holds this host's own
    interface address, where its services listen: reached only when listed
    by itself."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: the route's source address
        own = s.getsockname()[0]
    if own.startswith("127."):
        pytest.skip("this host has no address but loopback")
    srv, port = _server("0.0.0.0")
    try:
        connect = parse_request(f"CONNECT {own}:{port} HTTP/1.1\r\n\r\n".encode())
        for entries, status in ((["0.0.0.0/0"], 403), ([own], 200)):
            egress = EgressProxy(AllowList.parse(entries))
            try:
                addresses = await egress.destinations(connect)
                _, writer = await egress_module._connect(addresses, port, egress.allow)
                writer.close()
                got = 200
            except Refused as refused:
                got = refused.status
                assert "this host's own address" in refused.text, refused.text
            finally:
                egress.close()
            assert got == status, entries
    finally:
        srv.close()
