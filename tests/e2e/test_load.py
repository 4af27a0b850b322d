"""Load: traffic through the guest agent's forwards, and churn against the
long-lived processes (the host agent and the guest agent) with their open
file descriptors and RSS read before and after; then four instances at once.

Figures go to tests/.results/load.json. The machine is shared and TCG is
slow, so times are recorded, never asserted: the assertions are checksums,
counts and bounded growth.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import START_TIMEOUT, Roost, as_guest_root, wait_until
from tests.e2e.test_portfwd import free_port, guest_background, guest_kill, port_open

RESULTS = Path(__file__).resolve().parents[1] / ".results" / "load.json"
_results: dict[str, Any] = {}

# After the churn, at most this many more open fds in either agent: a leak
# of one per connection or per forward would show hundreds (or 50).
FD_GROWTH_MAX = 3
# RSS growth allowed after a warm-up, past the warm-up's high mark: allocator
# noise stays well below it, while leaking even 4 KiB per cycle (a socket's
# buffers, a stream object with its queue) would be 2 MiB over 500 cycles.
RSS_GROWTH_MAX_KIB = 2048
# 64 streams at once: each may queue a window (1 MiB) each way in either
# agent, and the allocator keeps that peak; twice that is the bound.
TCP64_RSS_GROWTH_MAX_KIB = 64 * 2 * 1024
# UDP may drop, but with at most UDP_WINDOW datagrams (of at most 1240 bytes)
# in flight neither the forward's per-peer queue (256 datagrams) nor a socket
# buffer (208 KiB by default) fills: a loss above 1 % is the forward losing
# datagrams, not the network being UDP.
UDP_LOSS_MAX = 0.01
UDP_WINDOW = 32
UDP_COUNT = 10_000

# One guest process for the module: a threaded TCP echo, a UDP echo, and a
# control connection whose "up"/"down" lines open and close a TCP echo
# listener (python3 would take seconds to start under TCG for each cycle).
GUEST_LOAD_SERVER = r"""
import socket, sys, threading
tcp_port, udp_port, control_port, toggle_port = map(int, sys.argv[1:5])

def echo(c):
    with c:
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)

def accept_loop(s, handler):
    while True:
        try:
            c, _ = s.accept()
        except OSError:  # shut down by "down"
            return
        threading.Thread(target=handler, args=(c,), daemon=True).start()

def listen(port, handler):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    threading.Thread(target=accept_loop, args=(s, handler), daemon=True).start()
    return s

def control(c):
    toggled = None
    with c:
        for line in c.makefile("rb"):
            if line == b"up\n" and toggled is None:
                toggled = listen(toggle_port, echo)
            elif line == b"down\n" and toggled is not None:
                toggled.shutdown(socket.SHUT_RDWR)  # wakes the accept() on Linux
                toggled.close()
                toggled = None
            else:
                c.sendall(b"bad\n")
                continue
            c.sendall(b"ok\n")

def udp_echo():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", udp_port))
    while True:
        data, peer = u.recvfrom(65535)
        u.sendto(data, peer)

listen(tcp_port, echo)
listen(control_port, control)
udp_echo()
"""

# Run as guest root: the guest agent's pid, open fds and VmRSS, once its fd
# count is at most argv[1] (or after 10 s). The marker is split so that
# this command line (and sudo's) does not match it.
GUEST_AGENT_USAGE = r"""
import json, os, sys, time
mark = b"roost-guestagent" + b".pyz"
def agents():
    found = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open("/proc/%s/cmdline" % p, "rb").read()
            stat = open("/proc/%s/stat" % p).read()
        except OSError:
            continue
        if mark in cmd and int(p) != os.getpid():
            found[int(p)] = int(stat.rsplit(")", 1)[1].split()[1])
    return [p for p, ppid in found.items() if ppid not in found]
def usage(pid):
    fds = len(os.listdir("/proc/%d/fd" % pid))
    rss = [l for l in open("/proc/%d/status" % pid) if l.startswith("VmRSS:")]
    return {"pid": pid, "fds": fds, "rss_kib": int(rss[0].split()[1])}
limit, deadline = int(sys.argv[1]), time.monotonic() + 10
while True:
    pids = agents()
    if len(pids) != 1:
        sys.exit("guest agent processes: %r" % pids)
    u = usage(pids[0])
    if u["fds"] <= limit or time.monotonic() > deadline:
        break
    time.sleep(0.1)
print(json.dumps(u))
"""


def _save(name: str, figures: dict[str, Any]) -> None:
    _results[name] = figures
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(_results, indent=2, sort_keys=True) + "\n")


@dataclass
class Usage:
    pid: int
    fds: int
    rss_kib: int


def host_agent_usage(roost: Roost, vm: str, fd_limit: int = 1 << 30) -> Usage:
    """The host agent's open fds and RSS, once its fd count is at most
    `fd_limit` (closed connections are released asynchronously) or after 10 s."""
    pid = roost.pid(vm, "ha.pid")
    assert pid is not None, "no ha.pid"
    deadline = time.monotonic() + 10
    while True:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        if fds <= fd_limit or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    rss = next(line for line in status if line.startswith("VmRSS:"))
    return Usage(pid, fds, int(rss.split()[1]))


def guest_agent_usage(roost: Roost, vm: str, fd_limit: int = 1 << 30) -> Usage:
    out = roost.run("shell", vm, "--", *as_guest_root(
        "python3", "-c", GUEST_AGENT_USAGE, str(fd_limit)), timeout=60).stdout
    return Usage(**json.loads(out))


@dataclass
class Agents:
    host: Usage
    guest: Usage


def agents_usage(roost: Roost, vm: str, before: Agents | None = None) -> Agents:
    """Both agents; with `before`, waits for their fds to settle to within the bound."""
    host_limit = before.host.fds + FD_GROWTH_MAX if before else 1 << 30
    guest_limit = before.guest.fds + FD_GROWTH_MAX if before else 1 << 30
    return Agents(host_agent_usage(roost, vm, host_limit),
                  guest_agent_usage(roost, vm, guest_limit))


def usage_figures(before: Agents, after: Agents,
                  rss_max_kib: int = RSS_GROWTH_MAX_KIB) -> dict[str, Any]:
    return {"before": {"hostAgent": asdict(before.host), "guestAgent": asdict(before.guest)},
            "after": {"hostAgent": asdict(after.host), "guestAgent": asdict(after.guest)},
            "bounds": {"fdGrowthMax": FD_GROWTH_MAX, "rssGrowthMaxKiB": rss_max_kib}}


def assert_bounded(before: Agents, after: Agents, rss_max_kib: int = RSS_GROWTH_MAX_KIB,
                   warm: Agents | None = None) -> None:
    """The same two processes, and growth within the bounds.

    With `warm` (taken before a warm-up round, `before` after it), RSS growth
    counts from the higher of the two: the allocators may hand memory back to
    the kernel between rounds and take it again, which is no leak, whereas a
    leak grows in both rounds and so passes the higher mark too."""
    for what, b, a, w in (("host agent", before.host, after.host, warm and warm.host),
                          ("guest agent", before.guest, after.guest, warm and warm.guest)):
        assert a.pid == b.pid, f"the {what} was replaced (pid {b.pid} -> {a.pid})"
        assert a.fds <= b.fds + FD_GROWTH_MAX, f"{what} fds {b.fds} -> {a.fds}"
        mark = max(b.rss_kib, w.rss_kib if w else 0)
        assert a.rss_kib <= mark + rss_max_kib, \
            f"{what} RSS {b.rss_kib} -> {a.rss_kib} KiB (warm-up high mark {mark} KiB)"


@dataclass
class LoadServer:
    tcp: int
    udp: int
    control: int
    toggle: int


def distinct_free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def runtime_forwards(roost: Roost, vm: str) -> list[dict[str, Any]]:
    try:
        forwards: list[dict[str, Any]] = json.loads(
            (roost.home / vm / "runtime.json").read_text()).get("portForwards", [])
    except (OSError, ValueError):
        return []
    return forwards


def has_forward(roost: Roost, vm: str, proto: str, port: int) -> bool:
    return any(f["protocol"] == proto and f["hostAddr"] == f"127.0.0.1:{port}"
               for f in runtime_forwards(roost, vm))


def forward_via(roost: Roost, vm: str, proto: str, port: int) -> str:
    """How the host agent (its API, through `roost info`) forwards this port."""
    info = json.loads(roost.run("info", vm, "--json").stdout)
    for f in info["hostagent"]["portForwards"]:
        if f["protocol"] == proto and f["hostAddr"] == f"127.0.0.1:{port}":
            return str(f["via"])
    raise AssertionError(f"no {proto} forward of 127.0.0.1:{port}: "
                         f"{info['hostagent']['portForwards']}")


@pytest.fixture(scope="module")
def server(roost: Roost, vm: str) -> Iterator[LoadServer]:
    ports = LoadServer(*distinct_free_ports(4))
    roost.run("shell", vm, "--", "sh", "-c", "cat > roost-load.py", input=GUEST_LOAD_SERVER)
    pid = guest_background(roost, vm, f"exec python3 roost-load.py {ports.tcp} {ports.udp} "
                                      f"{ports.control} {ports.toggle}")
    try:
        wait_until(lambda: all((has_forward(roost, vm, "tcp", ports.tcp),
                                has_forward(roost, vm, "udp", ports.udp),
                                has_forward(roost, vm, "tcp", ports.control))),
                   60, "the load server's forwards")
        yield ports
    finally:
        guest_kill(roost, vm, pid)


@pytest.fixture(scope="module", autouse=True)
def module_time() -> Iterator[None]:
    start = time.monotonic()
    yield
    _save("module", {"seconds": round(time.monotonic() - start, 2)})


def echo_once(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = s.recv(len(data) - len(got))
            if not chunk:
                break
            got += chunk
        return got


def test_64_connections_move_1mib_each_way(roost: Roost, vm: str, server: LoadServer) -> None:
    assert forward_via(roost, vm, "tcp", server.tcp) == "agent"
    before = agents_usage(roost, vm)
    # A payload of its own per connection: streams crossed in the tunnel fail too.
    payloads = [os.urandom(1 << 20) for _ in range(64)]

    def one(payload: bytes) -> dict[str, Any]:
        start, received = time.monotonic(), 0
        h = hashlib.sha256()
        try:
            with socket.create_connection(("127.0.0.1", server.tcp), timeout=300) as s:
                def send() -> None:
                    s.sendall(payload)
                    s.shutdown(socket.SHUT_WR)

                with ThreadPoolExecutor(1) as ex:
                    sent = ex.submit(send)
                    while data := s.recv(1 << 16):
                        h.update(data)
                        received += len(data)
                    sent.result()
        except OSError as e:
            return {"error": f"{e!r} after {received} bytes back", "ok": False}
        return {"ok": h.digest() == hashlib.sha256(payload).digest(), "received": received,
                "seconds": time.monotonic() - start}

    start = time.monotonic()
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, payloads))
    seconds = time.monotonic() - start
    after = agents_usage(roost, vm, before)
    failed = [r for r in results if not r["ok"]]
    _save("tcp64", {
        "connections": 64, "bytesEachWay": 1 << 20, "failed": len(failed),
        "errors": sorted({r.get("error", "checksum mismatch") for r in failed}),
        "seconds": round(seconds, 2), "mibPerSecondEachWay": round(64 / seconds, 2),
        "slowestConnectionSeconds": round(max(r.get("seconds", 0) for r in results), 2),
        **usage_figures(before, after, TCP64_RSS_GROWTH_MAX_KIB)})
    assert not failed, f"{len(failed)} of 64 connections failed: {failed[:3]}" \
        + roost._agent_logs((vm,))
    assert_bounded(before, after, TCP64_RSS_GROWTH_MAX_KIB)


def datagram(seq: int) -> bytes:
    """Datagram `seq`: its number, then bytes derived from it; 40..1240 bytes
    long, so frames of many sizes cross the tunnel."""
    size = 40 + (seq * 7919) % 1200
    body = hashlib.sha256(seq.to_bytes(4, "big")).digest() * (size // 32 + 1)
    return struct.pack(">I", seq) + body[: size - 4]


def test_10k_udp_datagrams(roost: Roost, vm: str, server: LoadServer) -> None:
    assert forward_via(roost, vm, "udp", server.udp) == "agent"
    lost_after = 2.0  # seconds without an echo before a datagram counts as lost
    outstanding: dict[int, float] = {}
    lost: set[int] = set()
    received = late = corrupt = duplicates = 0
    seen: set[int] = set()
    next_seq = 0
    start = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", server.udp))
        s.settimeout(0.2)
        while next_seq < UDP_COUNT or outstanding:
            while len(outstanding) < UDP_WINDOW and next_seq < UDP_COUNT:
                s.send(datagram(next_seq))
                outstanding[next_seq] = time.monotonic()
                next_seq += 1
            try:
                data = s.recv(2048)
            except TimeoutError:
                now = time.monotonic()
                for seq in [q for q, t in outstanding.items() if now - t > lost_after]:
                    del outstanding[seq]
                    lost.add(seq)
                continue
            seq = struct.unpack(">I", data[:4])[0] if len(data) >= 4 else -1
            if not 0 <= seq < next_seq or data != datagram(seq):
                corrupt += 1
            elif seq in seen:
                duplicates += 1
            else:
                seen.add(seq)
                received += 1
                if outstanding.pop(seq, None) is None:
                    lost.discard(seq)  # came back after we had given up on it
                    late += 1
    seconds = time.monotonic() - start
    _save("udp", {
        "sent": UDP_COUNT, "received": received, "lost": len(lost), "late": late,
        "corrupt": corrupt, "duplicates": duplicates, "window": UDP_WINDOW,
        "lossMax": UDP_LOSS_MAX, "seconds": round(seconds, 2),
        "datagramsPerSecond": round(received / seconds)})
    assert corrupt == 0 and duplicates == 0
    assert received + len(lost) == UDP_COUNT
    assert len(lost) <= UDP_LOSS_MAX * UDP_COUNT


def test_500_connection_cycles(roost: Roost, vm: str, server: LoadServer) -> None:
    def cycle(i: int) -> bool:
        data = f"cycle {i:04d}".encode()
        return echo_once(server.tcp, data) == data

    # Warm-up of the same size: the allocators' high water after earlier tests
    # (floods, 64 MiB of streams) is not growth; a leak grows in both rounds.
    warm = agents_usage(roost, vm)
    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(cycle, range(500)))
    before = agents_usage(roost, vm)
    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        ok = sum(pool.map(cycle, range(500)))
    seconds = time.monotonic() - start
    after = agents_usage(roost, vm, before)
    _save("connectionCycles", {"cycles": 500, "echoed": ok, "concurrency": 4, "warmUp": 500,
                               "warmUpGuestRssKiB": [warm.guest.rss_kib, before.guest.rss_kib],
                               "seconds": round(seconds, 2), **usage_figures(before, after)})
    assert ok == 500
    assert_bounded(before, after, warm=warm)


def forward_events(roost: Roost, vm: str, port: int) -> dict[str, int]:
    """How many forwards of host 127.0.0.1:`port` the host agent started and stopped."""
    counts = {"forwarding": 0, "stopping": 0}
    for line in (roost.home / vm / "ha.stdout.log").read_text().splitlines():
        fwd = json.loads(line)["status"].get("portForward")
        if fwd and fwd.get("hostAddr") == f"127.0.0.1:{port}" and fwd["type"] in counts:
            counts[fwd["type"]] += 1
    return counts


def test_50_listener_start_stop_cycles(roost: Roost, vm: str, server: LoadServer) -> None:
    port = server.toggle
    with socket.create_connection(("127.0.0.1", server.control), timeout=30) as control:
        replies = control.makefile("rb")

        def command(word: bytes) -> None:
            control.sendall(word + b"\n")
            assert replies.readline() == b"ok\n", f"the load server refused {word!r}"

        def up_and_down(i: int, check_via: bool = False) -> None:
            command(b"up")
            wait_until(lambda: port_open(port), 10, f"the forward of cycle {i}")
            if check_via:
                assert forward_via(roost, vm, "tcp", port) == "agent"
            data = f"listener cycle {i}".encode()
            assert echo_once(port, data) == data, f"cycle {i}: no echo through the forward"
            command(b"down")
            wait_until(lambda: not port_open(port), 10, f"the forward of cycle {i} to go")

        up_and_down(-1, check_via=True)
        warm = agents_usage(roost, vm)
        for i in range(50):  # warm-up of the same size (see test_500_connection_cycles)
            up_and_down(-2 - i)
        events_before = forward_events(roost, vm, port)
        before = agents_usage(roost, vm)
        start = time.monotonic()
        for i in range(50):
            up_and_down(i)
        seconds = time.monotonic() - start
    after = agents_usage(roost, vm, before)
    events_after = forward_events(roost, vm, port)
    added = events_after["forwarding"] - events_before["forwarding"]
    dropped = events_after["stopping"] - events_before["stopping"]
    _save("listenerCycles", {"cycles": 50, "forwardsAdded": added, "forwardsDropped": dropped,
                             "warmUp": 51,
                             "warmUpGuestRssKiB": [warm.guest.rss_kib, before.guest.rss_kib],
                             "seconds": round(seconds, 2), **usage_figures(before, after)})
    assert added == 50 and dropped == 50
    assert not has_forward(roost, vm, "tcp", port)
    assert_bounded(before, after, warm=warm)


@pytest.mark.timeout(2 * START_TIMEOUT + 300)  # two boots in a row, the second of three at once
def test_four_instances_at_once(roost: Roost, vm: str) -> None:
    solo, others = "ld0", ["ld1", "ld2", "ld3"]
    created: list[str] = []
    try:
        for name in [solo, *others]:
            roost.run("create", name, "--memory", "512MiB", "--disk", "4GiB")
            created.append(name)
        start = time.monotonic()
        roost.run("start", solo, "--timeout", str(START_TIMEOUT), timeout=START_TIMEOUT + 30)
        solo_seconds = time.monotonic() - start
        roost.run("delete", "--force", solo, timeout=120)
        created.remove(solo)

        start = time.monotonic()
        procs = {name: roost.popen("start", name, "--timeout", str(START_TIMEOUT))
                 for name in others}

        def finish(name: str) -> tuple[float, str]:
            """When `roost start NAME` was done, and why it failed if it did."""
            proc = procs[name]
            try:
                out, err = proc.communicate(timeout=START_TIMEOUT + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            done = round(time.monotonic() - start, 2)
            if proc.returncode != 0:
                return done, f"{name}: exit {proc.returncode}\n{out}{err}"
            return done, ""

        with ThreadPoolExecutor(len(others)) as pool:
            finished = dict(zip(others, pool.map(finish, others), strict=True))
        concurrent_seconds = time.monotonic() - start
        each = {name: done for name, (done, _) in finished.items()}
        failures = [failure for _, failure in finished.values() if failure]
        assert not failures, "\n".join(failures)
        rows = roost.ls()
        running = sorted(n for n in [vm, *others] if rows[n]["status"] == "Running")
        for name in others:  # each one answers, not only says Running
            assert roost.run("shell", name, "--", "echo", name).stdout.strip() == name
        _save("fourInstances", {
            "instances": [vm, *others], "running": running,
            "soloStartSeconds": round(solo_seconds, 2),
            "threeConcurrentStartsSeconds": round(concurrent_seconds, 2),
            "eachDoneAfterSeconds": each})
        assert running == sorted([vm, *others])
    finally:
        for name in created:
            roost.run("delete", "--force", name, timeout=120, check=False)
    rows = roost.ls()
    assert not set(others) & set(rows), rows
    assert not any((roost.home / name).exists() for name in [solo, *others])
