"""network.internet: false, attacked from guest root: the guest's packets
reach nothing outside it (the host's loopback through the gateway, the
host's own address, DNS), while what the host opens still works (SSH, a
port forward through the guest agent). The shared instance, which has the
internet, is the positive control in the same run: it reaches the same
host server. The cut-off instance allows one address (network.allowOut):
through the egress proxy only that one answers (test_debian_egress.py: the
same on debian-12)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Roost, as_guest_root, small_vm
from tests.e2e.test_portfwd import free_port, guest_background, guest_wait_listening

# Run as root in the guest: each target, and whether it answered.
PROBE = r"""
import json, socket, struct, sys
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            out[target] = s.recv(16).decode()
    except OSError as e:
        out[target] = "no answer: %s" % type(e).__name__
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
q = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x09localhost\x00" + struct.pack("!HH", 1, 1)
s.sendto(q, ("192.168.5.3", 53))
try:
    out["dns"] = "answered %d bytes" % len(s.recv(512))
except OSError as e:
    out["dns"] = "no answer: %s" % type(e).__name__
print(json.dumps(out))
"""


def host_address() -> str:
    """The host's own (non-loopback) address: where its default route leaves."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent
        return str(s.getsockname()[0])


@pytest.fixture(scope="module")
def host_server() -> Iterator[int]:
    with serving_host() as port:
        yield port


@contextlib.contextmanager
def serving_host() -> Iterator[int]:
    """A TCP server on all the host's addresses that says 'host'; its port."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    srv.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(b"host")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()


@pytest.fixture(scope="module")
def offline(roost: Roost) -> Iterator[str]:
    """Cut off, with one exception through the egress proxy: the host's own
    address (its loopback, where the same test server also listens, is not)."""
    with small_vm(roost, "offline", "--set", "network.internet=false",
                  "--set", f"network.allowOut=[{host_address()}]") as name:
        yield name


# Run as root in the guest: CONNECT requests to the egress proxy, each
# target's first line back and what its server then said.
THROUGH_PROXY = r"""
import json, socket, sys
out = {}
for target in sys.argv[1:]:
    try:
        with socket.create_connection(("127.0.0.1", 3128), timeout=20) as s:
            s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
            got = b""
            while b"\r\n\r\n" not in got:
                data = s.recv(4096)
                if not data:
                    break
                got += data
            head, _, rest = got.partition(b"\r\n\r\n")
            s.settimeout(5)
            try:
                rest += s.recv(64)
            except OSError:
                pass
            out[target] = [head.split(b"\r\n")[0].decode(), rest.decode(errors="replace")]
    except OSError as e:
        out[target] = ["no proxy: %s" % e, ""]
print(json.dumps(out))
"""


def probe(roost: Roost, name: str, port: int) -> dict[str, str]:
    targets = [f"192.168.5.2:{port}", f"{host_address()}:{port}"]
    out = roost.run("shell", name, "--", *as_guest_root("python3", "-", *targets),
                    input=PROBE, timeout=120)
    return dict(json.loads(out.stdout))


def test_an_offline_guest_reaches_nothing_from_root(roost: Roost, vm: str, offline: str,
                                                    host_server: int) -> None:
    online = probe(roost, vm, host_server)
    assert all(v == "host" for k, v in online.items() if k != "dns"), online
    assert online["dns"].startswith("answered"), online
    cut_off = probe(roost, offline, host_server)
    assert not any(v == "host" for v in cut_off.values()), cut_off
    assert all(v.startswith("no answer") for v in cut_off.values()), cut_off
    info = json.loads(roost.run("info", offline, "--json").stdout)
    assert info["hostagent"]["hostResolver"] is None  # nothing the guest could reach


def only_listed_through_proxy(roost: Roost, name: str, port: int) -> str:
    """From guest root, CONNECTs to the host's address (listed: its server
    answers) and to its loopback (unlisted: 403); the refusal's text."""
    allowed, unlisted = f"{host_address()}:{port}", f"127.0.0.1:{port}"
    out = roost.run("shell", name, "--", *as_guest_root("python3", "-", allowed, unlisted),
                    input=THROUGH_PROXY, timeout=120)
    got = json.loads(out.stdout)
    assert got[allowed] == ["HTTP/1.1 200 Connection established", "host"], got
    assert got[unlisted][0] == "HTTP/1.1 403 Forbidden", got
    return str(got[unlisted][1])


def test_allow_out_lets_only_the_listed_address_through_the_proxy(
        roost: Roost, offline: str, host_server: int) -> None:
    """From guest root: the listed address answers through the egress proxy,
    the host's loopback (unlisted) is refused there, and neither is reached
    around the proxy (the test above). Logins are told of the proxy, and the
    guest agent's listener for it is no port forward."""
    assert "127.0.0.1 is not in network.allowOut" in only_listed_through_proxy(
        roost, offline, host_server)
    env = roost.run("shell", offline, "--", "sh", "-c", "echo $https_proxy $no_proxy").stdout
    assert env.split() == ["http://127.0.0.1:3128", "localhost,127.0.0.1,::1"], env
    forwards = roost.ls()[offline]["portForwards"]
    assert not any(f["guestAddr"].endswith(":3128") for f in forwards), forwards
    proxy = json.loads(roost.run("info", offline, "--json").stdout)["hostagent"]["egressProxy"]
    assert proxy["guestAddr"] == "127.0.0.1:3128" and proxy["passed"] >= 1 \
        and proxy["refused"] >= 1, proxy


def test_what_the_host_opens_still_works(roost: Roost, offline: str, tmp_path: Path) -> None:
    assert roost.run("shell", offline, "--", "echo", "over-ssh").stdout == "over-ssh\n"
    for kind in ("virtiofs", "reverse-sshfs"):
        share = tmp_path / kind
        share.mkdir()
        (share / "in.txt").write_text(f"{kind} in\n")
        point = f"/mnt/offline-{kind}"
        roost.run("mount", "add", offline, str(share), point, "--type", kind, "--writable")
        assert roost.run("shell", offline, "--", "cat", f"{point}/in.txt").stdout == \
            f"{kind} in\n"
        roost.run("shell", offline, "--", "sh", "-c", f"echo out > {point}/out.txt")
        assert (share / "out.txt").read_text() == "out\n"
        roost.run("mount", "remove", offline, point)
    port = free_port()
    pid = guest_background(roost, offline, f"python3 -m http.server {port} --bind 127.0.0.1")
    try:
        guest_wait_listening(roost, offline, port)
        body = b""
        for _ in range(100):  # the forward follows the guest's listen() within moments
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                body = s.recv(64)
            if body:
                break
            time.sleep(0.1)
        assert body.startswith(b"HTTP/1.0 200"), body
    finally:
        roost.run("shell", offline, "--", "kill", str(pid), check=False)

