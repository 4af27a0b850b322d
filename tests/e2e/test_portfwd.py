"""Guest ports appear on the host by themselves, through the guest agent.

Servers run in the shared VM (python3 from the built-in image); the host
reaches them on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.e2e.conftest import (
    GUEST_ECHO_SOCKET,
    GUEST_REVERSE_SOCKET,
    IGNORED_GUEST_PORT,
    REMAP_GUEST_PORT,
    REMAP_HOST_PORT,
    SOCKET_GUEST_PORT,
    STATIC_RW_GUEST,
    Roost,
    as_guest_root,
    host_echo_socket,
    host_port_socket,
    host_reverse_socket,
    pid_running,
    wait_until,
)
from tests.e2e.test_lifecycle import start

ECHO_SERVER = r"""
import socket, sys, threading
kind, addr = sys.argv[1], sys.argv[2]
if kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, int(sys.argv[3])))
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(data, peer)
if kind == "unix":
    s = socket.socket(socket.AF_UNIX)
    s.bind(addr)
else:
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(sys.argv[3])))
s.listen(128)
def serve(c):
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


# In the guest, as root: after QUIET seconds without a fork, the guest agent's
# port watch (over its Unix socket: `info` is no sign of activity); then a
# listener of this process's own (no fork: only the watcher's once-a-second
# rescan can find it) and how long until the forward's first connection.
QUIET_LISTENER = r"""
import json, os, socket, sys, time
sys.path.insert(0, "/mnt/cidata/roost-guestagent.pyz")
from roost_guest import protocol
quiet, port, out, held = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
# This VM's health checks run a command every second: set aside meanwhile.
os.makedirs(held, exist_ok=True)
for d in ("integrations.d", "probes.d"):
    os.makedirs(os.path.join(held, d), exist_ok=True)
    for name in os.listdir("/etc/roost/" + d):
        os.rename(os.path.join("/etc/roost", d, name), os.path.join(held, d, name))
# Connected before the quiet time: the agent starts a thread per connection,
# and a new thread is a fork to the kernel's process events.
agent = socket.socket(socket.AF_UNIX)
agent.connect("/run/roost/ga.sock")
decoder = protocol.FrameDecoder()
def info(req_id):
    agent.sendall(protocol.encode_json({"type": "info", "id": req_id}))
    while True:
        data = agent.recv(65536)
        if not data:
            raise SystemExit("the guest agent closed the connection")
        for msg in decoder.feed(data):
            # (Its listeners come first, as "part" events with the same id.)
            if isinstance(msg, protocol.JsonMessage) and msg.obj.get("id") == req_id \
                    and "ok" in msg.obj:
                return msg.obj["result"]
info(1)
time.sleep(quiet)
watch = info(2)["portWatch"]
server = socket.socket()
server.bind(("127.0.0.1", port))
server.listen(1)
listened = time.monotonic()
conn, _ = server.accept()
accepted = time.monotonic()
with open(out, "w") as f:
    json.dump({"portWatch": watch, "listenToAccept": accepted - listened}, f)
conn.close()
agent.close()
"""
# Puts back what QUIET_LISTENER set aside (idempotent).
RESTORE_CHECKS = ("for d in integrations.d probes.d; do [ -d {held}/$d ] && "
                  "for f in {held}/$d/*; do [ -e \"$f\" ] && mv \"$f\" /etc/roost/$d/; "
                  "done; done; true")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def guest_background(roost: Roost, vm: str, command: str) -> int:
    """Start `command` in the guest, detached; its guest pid."""
    out = roost.run("shell", vm, "--", "sh", "-c",
                    f"{command} </dev/null >/dev/null 2>&1 & echo $!").stdout
    return int(out.strip())


def guest_wait_listening(roost: Roost, vm: str, port: int) -> None:
    """Return once a TCP socket listens on 127.0.0.1:`port` in the guest."""
    listen_row = f" 0100007F:{port:04X} 00000000:0000 0A "  # /proc/net/tcp, state LISTEN
    roost.run("shell", vm, "--", "sh", "-c",
              f"until grep -q '{listen_row}' /proc/net/tcp; do sleep 0.05; done", timeout=60)


def guest_kill(roost: Roost, vm: str, pid: int) -> None:
    roost.run("shell", vm, "--", "kill", str(pid))


@pytest.fixture(scope="module")
def echo_script(roost: Roost, vm: str) -> str:
    roost.run("shell", vm, "--", "sh", "-c", "cat > /tmp/echo.py", input=ECHO_SERVER)
    return "python3 /tmp/echo.py"


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=2) as r:
        data: bytes = r.read()
        return data


def wait_fetch(url: str, timeout: float) -> float:
    """Seconds until `url` answers (fails after `timeout`)."""
    start = time.monotonic()
    while True:
        try:
            fetch(url)
            return time.monotonic() - start
        except OSError:
            if time.monotonic() - start > timeout:
                raise
            time.sleep(0.05)


def events(roost: Roost, vm: str) -> list[dict[str, Any]]:
    lines = (roost.home / vm / "ha.stdout.log").read_text().splitlines()
    out = []
    for line in lines:
        fwd = json.loads(line)["status"].get("portForward")
        if fwd:
            out.append(fwd)
    return out


def test_http_server_on_guest_loopback_appears_and_goes(roost: Roost, vm: str) -> None:
    port = free_port()
    pid = guest_background(roost, vm, f"python3 -m http.server {port} --bind 127.0.0.1")
    # python3 and its imports take 3-7 s to start under TCG on a busy host:
    # time the forward from the guest's listen(), not from the launch.
    guest_wait_listening(roost, vm, port)
    elapsed = wait_fetch(f"http://127.0.0.1:{port}/", timeout=5)
    assert elapsed < 5
    assert {"type": "forwarding", "protocol": "tcp", "guestAddr": f"127.0.0.1:{port}",
            "hostAddr": f"127.0.0.1:{port}"} in events(roost, vm)
    # `roost ls` reads runtime.json, which the host agent writes once per
    # burst of changes (RUNTIME_WRITE_DELAY): soon, not with the event.
    wait_until(lambda: any(f["hostAddr"] == f"127.0.0.1:{port}"
                           for f in roost.ls()[vm]["portForwards"]), 3, "the forward in ls")
    guest_kill(roost, vm, pid)
    wait_until(lambda: not port_open(port), 3, "the host port to close")


def test_quiet_guest_agent_sleeps_and_still_finds_a_new_listener(roost: Roost, vm: str) -> None:
    """A guest with nothing forking for a while (this VM's health checks set
    aside meanwhile: they run a command every second): the agent's port watcher
    waits on the kernel's process events instead of rescanning ten times a
    second, and a listener opened then (by a process that neither forks nor
    is new) still gets its forward from the once-a-second rescan."""
    port, out = free_port(), "/tmp/roost-quiet-listener.json"
    held = "/etc/roost/held-by-test"  # beside the checks: they are renamed
    roost.run("shell", vm, "--", "sh", "-c", "cat > /tmp/quiet-listener.py",
              input=QUIET_LISTENER)
    pid = guest_background(roost, vm, " ".join(as_guest_root(
        "python3", "/tmp/quiet-listener.py", "8", str(port), out, held)))
    try:
        # Nothing more in the guest until the forward is there: a `roost shell`
        # would fork there and wake the watcher.
        wait_until(lambda: port_open(port), 40, "the quiet guest's listener on the host")
        # A connection the guest accepts: one closed at once may never reach it.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(b"x")
            wait_until(lambda: roost.run("shell", vm, "--", "test", "-s", out,
                                         check=False).returncode == 0, 20, "the guest's figures")
        found = json.loads(roost.run("shell", vm, "--", "cat", out).stdout)
    finally:
        roost.run("shell", vm, "--", *as_guest_root("kill", str(pid)), check=False)
        roost.run("shell", vm, "--", *as_guest_root("sh", "-c", RESTORE_CHECKS.format(held=held)))
    assert found["portWatch"]["wakeup"] == "proc-events", found
    assert found["portWatch"]["active"] is False, found
    assert found["listenToAccept"] < 3.0, found


def test_listener_on_all_addresses(roost: Roost, vm: str, echo_script: str) -> None:
    port = free_port()
    pid = guest_background(roost, vm, f"{echo_script} tcp 0.0.0.0 {port}")
    wait_until(lambda: port_open(port), 5, "the forward of a 0.0.0.0 listener")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"all addresses")
        assert s.recv(100) == b"all addresses"
    guest_kill(roost, vm, pid)


def test_remap_and_ignore_rules(roost: Roost, vm: str, echo_script: str) -> None:
    remap = guest_background(roost, vm, f"{echo_script} tcp 127.0.0.1 {REMAP_GUEST_PORT}")
    ignored = guest_background(roost, vm, f"{echo_script} tcp 127.0.0.1 {IGNORED_GUEST_PORT}")
    wait_until(lambda: port_open(REMAP_HOST_PORT), 5, "the remapped port")
    with socket.create_connection(("127.0.0.1", REMAP_HOST_PORT), timeout=5) as s:
        s.sendall(b"remapped")
        assert s.recv(100) == b"remapped"
    assert not port_open(REMAP_GUEST_PORT)
    time.sleep(0.5)  # the ignored listener has been seen by now
    assert not port_open(IGNORED_GUEST_PORT)
    # Not forwarded, and said so, as Lima does.
    about_ignored = [e for e in events(roost, vm)
                     if e["guestAddr"].endswith(f":{IGNORED_GUEST_PORT}")]
    assert about_ignored and all(
        e == {"type": "not-forwarding", "protocol": "tcp",
              "guestAddr": f"127.0.0.1:{IGNORED_GUEST_PORT}",
              "reason": "a portForwards rule ignores it"} for e in about_ignored), about_ignored
    guest_kill(roost, vm, remap)
    guest_kill(roost, vm, ignored)


def test_udp_echo(roost: Roost, vm: str, echo_script: str) -> None:
    port = free_port()
    pid = guest_background(roost, vm, f"{echo_script} udp 127.0.0.1 {port}")
    deadline = time.monotonic() + 5
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        while True:
            try:
                s.sendto(b"udp ping", ("127.0.0.1", port))
                data, _ = s.recvfrom(100)
                break
            except OSError:
                assert time.monotonic() < deadline, "no UDP echo through the forward"
    assert data == b"udp ping"
    guest_kill(roost, vm, pid)


def test_guest_unix_socket_on_host(roost: Roost, vm: str, echo_script: str) -> None:
    pid = guest_background(roost, vm, f"rm -f {GUEST_ECHO_SOCKET}; "
                                      f"{echo_script} unix {GUEST_ECHO_SOCKET}")
    path = str(host_echo_socket(roost))
    deadline = time.monotonic() + 5
    while True:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(path)
                s.sendall(b"over unix")
                assert s.recv(100) == b"over unix"
                break
        except (ConnectionError, AssertionError, OSError):
            assert time.monotonic() < deadline, "guest unix socket not reachable"
            time.sleep(0.1)
    guest_kill(roost, vm, pid)


def test_guest_port_on_a_host_socket(roost: Roost, vm: str, echo_script: str) -> None:
    """guestPort with hostSocket: the guest's TCP listener on a host Unix
    socket only its owner may use, no host port, gone with the listener."""
    path = host_port_socket(roost)
    pid = guest_background(roost, vm, f"{echo_script} tcp 127.0.0.1 {SOCKET_GUEST_PORT}")
    wait_until(path.is_socket, 30, "the host socket of the guest port")
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(b"port over unix")
        assert s.recv(100) == b"port over unix"
    assert path.stat().st_mode & 0o777 == 0o600
    assert not port_open(SOCKET_GUEST_PORT)
    forwarding = [e for e in events(roost, vm) if e.get("hostAddr") == str(path)]
    assert forwarding[-1]["type"] == "forwarding", forwarding
    assert forwarding[-1]["guestAddr"] == f"127.0.0.1:{SOCKET_GUEST_PORT}"
    guest_kill(roost, vm, pid)
    wait_until(lambda: not path.exists(), 30, "the host socket to go with the listener")


def test_reverse_host_socket_in_guest(roost: Roost, vm: str) -> None:
    path = str(host_reverse_socket(roost))
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"host says " + conn.recv(100))

    with ThreadPoolExecutor(1) as ex:
        done = ex.submit(serve)
        script = (f"import socket; s = socket.socket(socket.AF_UNIX); "
                  f"s.connect({GUEST_REVERSE_SOCKET!r}); s.sendall(b'hi'); "
                  "print(s.recv(100).decode())")
        out = roost.run("shell", vm, "--", "python3", "-c", script).stdout
        done.result(timeout=10)
    server.close()
    assert out.strip() == "host says hi"


def test_taken_host_port_fails_cleanly(roost: Roost, vm: str, echo_script: str) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    pid = guest_background(roost, vm, f"{echo_script} tcp 127.0.0.1 {port}")

    def failed_event() -> bool:
        return any(e["type"] == "failed" and e["hostAddr"] == f"127.0.0.1:{port}"
                   for e in events(roost, vm))

    wait_until(failed_event, 5, "a failed portForward event")
    event = next(e for e in events(roost, vm) if e["type"] == "failed")
    assert "taken" in event["error"] and f"127.0.0.1:{port}" in event["error"]
    assert roost.ls()[vm]["status"] == "Running"
    assert roost.run("shell", vm, "--", "true").returncode == 0
    blocker.close()
    guest_kill(roost, vm, pid)


def test_64_concurrent_connections_of_1mib(roost: Roost, vm: str, echo_script: str) -> None:
    port = free_port()
    pid = guest_background(roost, vm, f"{echo_script} tcp 127.0.0.1 {port}")
    wait_until(lambda: port_open(port), 5, "the echo forward")
    payload = os.urandom(1 << 20)
    digest = hashlib.sha256(payload).hexdigest()

    def one(_: int) -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
            h = hashlib.sha256()
            received = 0

            def send() -> None:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)

            with ThreadPoolExecutor(1) as ex:
                sent = ex.submit(send)
                while received < len(payload):
                    data = s.recv(1 << 16)
                    if not data:
                        break
                    h.update(data)
                    received += len(data)
                sent.result()
            return h.hexdigest()

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(64)))
    assert results == [digest] * 64
    guest_kill(roost, vm, pid)


def test_host_agent_restart_keeps_guest_and_forwards(roost: Roost, vm: str,
                                                      echo_script: str) -> None:
    port = free_port()
    guest_background(roost, vm, f"{echo_script} tcp 127.0.0.1 {port}")
    wait_until(lambda: port_open(port), 5, "the echo forward")
    uptime_before = float(roost.run("shell", vm, "--", "cat", "/proc/uptime").stdout.split()[0])
    ha_pid = roost.pid(vm, "ha.pid")
    assert ha_pid is not None
    os.kill(ha_pid, signal.SIGKILL)
    wait_until(lambda: not pid_running(ha_pid), 10, "the host agent to die")
    assert roost.ls()[vm]["status"] == "Broken"
    start(roost, vm)
    uptime_after = float(roost.run("shell", vm, "--", "cat", "/proc/uptime").stdout.split()[0])
    assert uptime_after > uptime_before  # the same boot: no reboot happened
    wait_until(lambda: port_open(port), 5, "the forward after the restart")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"still here")
        assert s.recv(100) == b"still here"
    # roost.yaml's shares stayed mounted (not mounted again, which fails).
    status = json.loads(roost.run("info", vm, "--json").stdout)["hostagent"]["status"]
    assert not status["degraded"] and not status.get("errors"), status
    mounted = {m["mountPoint"]: m for m in json.loads(
        roost.run("mount", "list", vm, "--json").stdout)}
    assert mounted[STATIC_RW_GUEST]["state"] == "mounted"


def test_ssh_fallback_forward(roost: Roost, vm: str, echo_script: str) -> None:
    # The mechanism the host agent falls back to without a guest agent:
    # `ssh -O forward -L` on the instance's ControlMaster.
    import asyncio

    from roost.hostagent.portfwd.forward import SSHForward

    guest_port, host_port = free_port(), free_port()
    pid = guest_background(roost, vm, f"{echo_script} tcp 127.0.0.1 {guest_port}")
    wait_until(lambda: port_open(guest_port), 5, "the echo forward")
    base = ["ssh", "-F", str(roost.home / vm / "ssh.config"), f"roost-{vm}"]
    fwd = SSHForward(base, "127.0.0.1", host_port, "127.0.0.1", guest_port)
    asyncio.run(fwd.start())
    try:
        with socket.create_connection(("127.0.0.1", host_port), timeout=5) as s:
            s.sendall(b"through ssh")
            assert s.recv(100) == b"through ssh"
    finally:
        asyncio.run(fwd.stop())
    assert not port_open(host_port)
    guest_kill(roost, vm, pid)
