#!/usr/bin/env python3
"""Port-forward benchmark: roost's tunnel against `ssh -L`, in one run.

One VM; in it a source server that sends as many bytes as asked. The host
downloads SIZE through the roost forward (guest agent tunnel over
virtio-serial) and through an `ssh -L` forward (the instance's SSH
ControlMaster) to the same guest service, runs interleaved; the roost
forward is checked to go through the guest agent (`via: agent` in `roost
ls --json`). Connection set-up is a connect plus a one-byte round trip,
interleaved roost / ssh -L. Listen-to-accept runs from the guest's own
listen() (the guest stamps its clock right after it; the guest-host clock
offset is measured through the forward, best of 50 round trips, and
removed) to the first connect the host port accepts.

Many listeners: the guest opens LISTENERS TCP listeners at once; the figure
is the time from its stamp (after the last listen()) until the host agent's
API lists a forward for every one. Its baseline, in the same run on the same
VM: the same number of forwards made as Lima's SSH forwarder makes them, one
`ssh -O forward -L` per port on the instance's ControlMaster, one after
another (then cancelled).

    .venv/bin/python bench/portfwd.py [--size-mib 256] [--runs 3] [--listeners 1000]
    # prints JSON
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

from common import host_facts, scratch_home, summary

SOURCE_SERVER = r"""
import socket, struct, sys, threading, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
print("listening %.6f" % time.time(), flush=True)
block = b"\0" * 65536
def serve(c):
    head = c.recv(8)
    if len(head) < 8:
        c.close(); return
    n = struct.unpack(">Q", head)[0]
    if n == 0:
        c.sendall(b"!")
    if n == 2**64 - 1:  # the guest's clock
        c.sendall(struct.pack(">d", time.time()))
        n = 0
    while n > 0:
        k = min(n, len(block))
        c.sendall(block[:k])
        n -= k
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


MANY_LISTENERS = r"""
import socket, sys, time
n, first = int(sys.argv[1]), int(sys.argv[2])
socks = []
for port in range(first, first + n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(8)
    socks.append(s)
print("listening %.6f" % time.time(), flush=True)
sys.stdin.read()
"""


def roost(home: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "roost", *args], text=True, capture_output=True,
                          env={**os.environ, "ROOST_HOME": str(home)}, check=True, input=input)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float) -> float:
    start = time.monotonic()
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"127.0.0.1:{port} never accepted")
        time.sleep(0.002)


def download(port: int, size: int) -> float:
    """MiB/s for `size` bytes from the source server."""
    with socket.create_connection(("127.0.0.1", port), timeout=300) as s:
        start = time.monotonic()
        s.sendall(struct.pack(">Q", size))
        got = 0
        while got < size:
            data = s.recv(1 << 18)
            if not data:
                raise RuntimeError(f"stream ended after {got} of {size} bytes")
            got += len(data)
        return size / (1 << 20) / (time.monotonic() - start)


def connect_rtt(port: int, n: int = 20) -> list[float]:
    out = []
    for _ in range(n):
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(struct.pack(">Q", 0))
            assert s.recv(1) == b"!"
        out.append(time.monotonic() - start)
    return out



def clock_offset(port: int, n: int = 50) -> tuple[float, float]:
    """(guest clock - host clock, its uncertainty): the round trip through the
    forward with the least delay, its guest stamp taken to be mid-way."""
    best: tuple[float, float] | None = None
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            before = time.time()
            s.sendall(struct.pack(">Q", 2**64 - 1))
            data = b""
            while len(data) < 8:
                data += s.recv(8 - len(data))
            after = time.time()
        guest = struct.unpack(">d", data)[0]
        sample = (guest - (before + after) / 2, (after - before) / 2)
        if best is None or sample[1] < best[1]:
            best = sample
    assert best is not None
    return best


def accept_time(port: int, timeout: float) -> float:
    """The host clock when 127.0.0.1:port first accepts a connection."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return time.time()
        time.sleep(0.001)
    raise TimeoutError(f"127.0.0.1:{port} never accepted")


def listen_to_accept(home: Path, name: str, runs: int, offset: float) -> list[float]:
    """From the guest's listen() (its stamp, on the host's clock) to the host accepting."""
    out = []
    for _ in range(runs):
        port = free_port()
        proc = subprocess.Popen(
            ["ssh", "-F", str(home / name / "ssh.config"), f"roost-{name}", "python3",
             "/tmp/source.py", str(port)], text=True,
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            accepted = accept_time(port, 20)
            assert proc.stdout is not None
            word, stamp = proc.stdout.readline().split()
            assert word == "listening"
            out.append(accepted - (float(stamp) - offset))
        finally:
            proc.terminate()
            proc.wait()
    return out


def free_range(n: int, avoid: range = range(0)) -> range:
    """n consecutive ports free on the host's loopback (the forwards of the
    guest's listeners take the same port numbers)."""
    for first in range(20000, 30000 - n, 100):
        if first in avoid or first + n - 1 in avoid:
            continue
        socks = []
        try:
            for port in range(first, first + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return range(first, first + n)
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise SystemExit(f"no {n} free consecutive ports in 20000..30000")


def forwarded(home: Path, name: str, first: int, n: int) -> int:
    """How many guest ports in first..first+n the host agent forwards now."""
    from roost.ops import hostapi

    info = hostapi.request(home / name / "ha.sock", "GET", "/v1/info", timeout=30)
    ports = [int(f["guestAddr"].rsplit(":", 1)[1]) for f in info["portForwards"]
             if f["protocol"] == "tcp"]
    return sum(first <= p < first + n for p in ports)


def many_listeners(home: Path, name: str, ports: range, offset: float) -> float:
    """From the guest's stamp after listen() on each of ports to a forward for each."""
    n = len(ports)
    proc = subprocess.Popen(
        ["ssh", "-F", str(home / name / "ssh.config"), f"roost-{name}", "sh", "-c",
         f"'ulimit -n {n + 100}; exec python3 /tmp/many.py {n} {ports.start}'"],
        text=True, stdout=subprocess.PIPE, stdin=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        word, stamp = proc.stdout.readline().split()
        assert word == "listening"
        deadline = time.monotonic() + 300
        while forwarded(home, name, ports.start, n) < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"{n} listeners were not all forwarded in 300 s")
            time.sleep(0.02)
        return time.time() - (float(stamp) - offset)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()


def ssh_forward_each(home: Path, name: str, ports: range, guest_port: int) -> float:
    """Lima's way: one `ssh -O forward -L` per port, one after another; then
    they are cancelled (not timed)."""
    base = ["ssh", "-F", str(home / name / "ssh.config")]
    n = len(ports)
    specs = [f"127.0.0.1:{port}:127.0.0.1:{guest_port}" for port in ports]
    started = time.monotonic()
    for spec in specs:
        subprocess.run([*base, "-O", "forward", "-L", spec, f"roost-{name}"], check=True,
                       capture_output=True)
    took = time.monotonic() - started
    for i in range(0, n, 100):
        subprocess.run([*base, "-O", "cancel",
                        *[a for spec in specs[i : i + 100] for a in ("-L", spec)],
                        f"roost-{name}"], capture_output=True)
    return took


def connect_rtts(ports: dict[str, int], n: int = 30) -> dict[str, list[float]]:
    """Connect + a one-byte round trip, taking turns between the forwards."""
    out: dict[str, list[float]] = {k: [] for k in ports}
    for _ in range(n):
        for key, port in ports.items():
            out[key] += connect_rtt(port, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--listeners", type=int, default=1000)
    args = parser.parse_args()
    size = args.size_mib << 20
    with scratch_home() as home:
        name = "pf"
        env = {**os.environ, "ROOST_HOME": str(home)}
        roost(home, "start", name, "--timeout", "300")
        roost(home, "shell", name, "--", "sh", "-c", "cat > /tmp/source.py", input=SOURCE_SERVER)
        roost(home, "shell", name, "--", "sh", "-c", "cat > /tmp/many.py", input=MANY_LISTENERS)
        port = free_port()
        subprocess.run([sys.executable, "-m", "roost", "shell", name, "--", "sh", "-c",
                        f"python3 /tmp/source.py {port} </dev/null >/dev/null 2>&1 &"],
                       env=env, check=True, capture_output=True)
        wait_port(port, 10)
        forwards = json.loads(roost(home, "ls", "--json").stdout)[0]["portForwards"]
        via = next(f["via"] for f in forwards
                   if f["protocol"] == "tcp" and f["guestAddr"].endswith(f":{port}"))
        assert via == "agent", forwards  # the guest agent's tunnel, not SSH
        ssh_port = free_port()
        ssh_base = ["ssh", "-F", str(home / name / "ssh.config")]
        subprocess.run([*ssh_base, "-O", "forward", "-L", f"127.0.0.1:{ssh_port}:127.0.0.1:{port}",
                        f"roost-{name}"], check=True, capture_output=True)
        roost_mibs, ssh_mibs = [], []
        for _ in range(args.runs):  # interleaved, so both see the same load
            roost_mibs.append(download(port, size))
            ssh_mibs.append(download(ssh_port, size))
        rtt = connect_rtts({"roost": port, "ssh": ssh_port})
        offset, uncertainty = clock_offset(port)
        l2a = listen_to_accept(home, name, 5, offset)
        guest_ports = free_range(args.listeners)
        many = many_listeners(home, name, guest_ports, offset)
        many_ssh = ssh_forward_each(home, name, free_range(args.listeners, guest_ports), port)
        ratio = statistics.median(roost_mibs) / statistics.median(ssh_mibs)
        print(json.dumps({
            **host_facts(),
            "size_mib": args.size_mib,
            "runs": args.runs,
            "roost_tunnel_mib_s": summary(roost_mibs, 1),
            "ssh_L_mib_s": summary(ssh_mibs, 1),
            "throughput_ratio_roost_over_ssh": round(ratio, 2),
            "throughput_ratio_goal": 3.0,
            "roost_forward_via": via,
            "connect_first_byte_roost_s": summary(rtt["roost"], 4),
            "connect_first_byte_ssh_L_s": summary(rtt["ssh"], 4),
            "connect_ratio_roost_over_ssh_L": round(statistics.median(rtt["roost"])
                                                    / statistics.median(rtt["ssh"]), 2),
            "connect_ratio_goal": 1.0,
            "guest_clock_offset_s": round(offset, 4),
            "guest_clock_offset_uncertainty_s": round(uncertainty, 4),
            "listen_to_host_accept_s": summary(l2a, 3),
            "listen_to_host_accept_goal_s": 0.25,
            "listeners": args.listeners,
            "listeners_all_forwarded_s": round(many, 2),
            "baseline_ssh_O_forward_each_s": round(many_ssh, 2),
            "listeners_ratio_roost_over_ssh_each": round(many / many_ssh, 3),
        }, indent=2))


if __name__ == "__main__":
    main()
