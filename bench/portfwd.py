#!/usr/bin/env python3
"""Port-forward benchmark: roost's tunnel against `ssh -L`, in one run.

One VM; in it a source server that sends as many bytes as asked. The host
downloads SIZE through the roost forward (guest agent tunnel over
virtio-serial) and through an `ssh -L` forward (the instance's SSH
ControlMaster) to the same guest service; connection set-up is timed as a
connect plus a one-byte round trip; and the time from the guest's listen()
to the host port accepting is measured from the guest printing "listening"
(over SSH) to the first successful connect.

    .venv/bin/python bench/portfwd.py [--size-mib 256] [--runs 3]   # prints JSON
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

from common import scratch_home, summary

SOURCE_SERVER = r"""
import socket, struct, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
print("listening", flush=True)
block = b"\0" * 65536
def serve(c):
    head = c.recv(8)
    if len(head) < 8:
        c.close(); return
    n = struct.unpack(">Q", head)[0]
    if n == 0:
        c.sendall(b"!")
    while n > 0:
        k = min(n, len(block))
        c.sendall(block[:k])
        n -= k
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
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



def listen_to_accept(home: Path, name: str, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "roost", "shell", name, "--", "python3", "/tmp/source.py",
             str(port)], env={**os.environ, "ROOST_HOME": str(home)}, text=True,
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "listening"
        out.append(wait_port(port, 10))
        proc.terminate()
        proc.wait()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib << 20
    with scratch_home() as home:
        name = "pf"
        env = {**os.environ, "ROOST_HOME": str(home)}
        roost(home, "start", name, "--timeout", "300")
        roost(home, "shell", name, "--", "sh", "-c", "cat > /tmp/source.py", input=SOURCE_SERVER)
        port = free_port()
        subprocess.run([sys.executable, "-m", "roost", "shell", name, "--", "sh", "-c",
                        f"python3 /tmp/source.py {port} </dev/null >/dev/null 2>&1 &"],
                       env=env, check=True, capture_output=True)
        wait_port(port, 10)
        ssh_port = free_port()
        ssh_base = ["ssh", "-F", str(home / name / "ssh.config")]
        subprocess.run([*ssh_base, "-O", "forward", "-L", f"127.0.0.1:{ssh_port}:127.0.0.1:{port}",
                        f"roost-{name}"], check=True, capture_output=True)
        roost_mibs, ssh_mibs = [], []
        for _ in range(args.runs):  # interleaved, so both see the same load
            roost_mibs.append(download(port, size))
            ssh_mibs.append(download(ssh_port, size))
        roost_rtt, ssh_rtt = connect_rtt(port), connect_rtt(ssh_port)
        l2a = listen_to_accept(home, name, 5)
        ratio = statistics.median(roost_mibs) / statistics.median(ssh_mibs)
        print(json.dumps({
            "size_mib": args.size_mib,
            "runs": args.runs,
            "roost_tunnel_mib_s": summary(roost_mibs, 1),
            "ssh_L_mib_s": summary(ssh_mibs, 1),
            "throughput_ratio_roost_over_ssh": round(ratio, 2),
            "throughput_ratio_goal": 2.0,
            "connect_roundtrip_roost_s": summary(roost_rtt, 4),
            "connect_roundtrip_ssh_s": summary(ssh_rtt, 4),
            "listen_to_host_accept_s": summary(l2a, 3),
            "listen_to_host_accept_goal_s": 0.25,
        }, indent=2))


if __name__ == "__main__":
    main()
