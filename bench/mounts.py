#!/usr/bin/env python3
"""Mount benchmark: sequential reads through each mount type against the
guest's own disk, in one VM and one run, and the time from `roost mount add`
to the first successful read in the guest (virtiofs and reverse-sshfs,
both confined: roost.hostagent.userns).

The confinement's own cost, in the same run: each share daemon started
confined as roost starts it (a user and mount namespace, the share bound,
a seccomp filter) against the same daemon started plainly by this script
(no namespace; root's virtiofsd, which needs root), interleaved A B A B,
each until it serves (virtiofsd: waiting on its socket; sftp-server: its
answer to an SFTP INIT). "Before" a hot-mount is its add-to-first-read
less that difference.

The VM boots with a static 9p share (9p cannot be hot-plugged on QEMU 7.2);
virtiofs and reverse-sshfs are hot-mounted on the same host folder. Before
each read the guest drops its page cache; the file is SIZE of random bytes.

    .venv/bin/python bench/mounts.py [--size-mib 256] [--runs 2]   # prints JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from common import roost, scratch_home, summary


def guest_read_mib_s(home: Path, name: str, path: str, size: int) -> float:
    # busybox dd prints no timing: bracket it with the guest's uptime (10 ms).
    out = roost(home, "shell", name, "--", "sh", "-c",
                f"sync; echo 3 > /proc/sys/vm/drop_caches; read a _ </proc/uptime; "
                f"dd if={path} of=/dev/null bs=1M 2>/dev/null; read b _ </proc/uptime; "
                "echo $a $b")
    start, end = (float(x) for x in out.split())
    return size / (1 << 20) / max(end - start, 0.01)


SFTP_INIT = struct.pack(">IBI", 5, 1, 3)  # length 5, SSH_FXP_INIT, version 3


async def _virtiofsd_start_s(share: Path, work: Path, confined: bool) -> float:
    from roost.hostagent.mounts.virtiofsd import Virtiofsd, find_virtiofsd

    binary = find_virtiofsd()
    assert binary is not None, "virtiofsd (qemu-system-common) is needed"
    sock = work / "v.sock"
    sock.unlink(missing_ok=True)
    start = time.monotonic()
    if confined:
        daemon = Virtiofsd(binary, sock, str(share), work / "v.log")
        await daemon.start()
        took = time.monotonic() - start
        await daemon.stop()
        return took
    proc = subprocess.Popen([binary, f"--socket-path={sock}", "-o", f"source={share}",
                             "-o", "cache=auto", "-o", "sandbox=chroot"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not sock.exists():
        await asyncio.sleep(0.002)
    took = time.monotonic() - start
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    return took


async def _sftp_start_s(share: Path, confined: bool) -> float:
    from roost.hostagent.mounts.sftp import Grant, find_sftp_server, start_sftp_server

    binary = find_sftp_server()
    assert binary is not None, "sftp-server (openssh-sftp-server) is needed"
    start = time.monotonic()
    if confined:
        proc = await start_sftp_server(binary, Grant(str(share), True))
    else:
        proc = await asyncio.create_subprocess_exec(
            binary, "-d", str(share), "-e", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(SFTP_INIT)
    await proc.stdout.readexactly(9)  # SSH_FXP_VERSION's header
    took = time.monotonic() - start
    proc.stdin.close()
    await proc.wait()
    return took


def confinement_cost(share: Path, runs: int) -> tuple[dict[str, object], dict[str, float]]:
    """Each daemon's start, plain and confined; and what confinement adds (medians)."""
    times: dict[str, list[float]] = {k: [] for k in
                                     ("virtiofsd_plain", "virtiofsd_confined",
                                      "sftp_server_plain", "sftp_server_confined")}
    with tempfile.TemporaryDirectory(prefix="rbench-vfs-") as work:
        for _ in range(runs):  # A B A B
            for confined in (False, True):
                tag = "confined" if confined else "plain"
                times[f"virtiofsd_{tag}"].append(
                    asyncio.run(_virtiofsd_start_s(share, Path(work), confined)))
                times[f"sftp_server_{tag}"].append(asyncio.run(_sftp_start_s(share, confined)))
    added = {kind: round(statistics.median(times[f"{daemon}_confined"])
                         - statistics.median(times[f"{daemon}_plain"]), 3)
             for kind, daemon in (("virtiofs", "virtiofsd"), ("reverse-sshfs", "sftp_server"))}
    return {k: summary(v) for k, v in times.items()}, added


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    size = args.size_mib << 20
    with scratch_home() as home:
        share = home / "share"
        share.mkdir()
        with open(share / "big.bin", "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        (share / "small.txt").write_text("ready\n")
        name = "mnt"
        (home / "c.yaml").write_text(f"mountType: 9p\nmounts:\n  - location: {share}\n"
                                     f"    mountPoint: /mnt/9p\n")
        roost(home, "start", name, "--config", str(home / "c.yaml"), "--timeout", "300")
        roost(home, "mount", "add", name, str(share), "/mnt/virtiofs", "--type", "virtiofs")
        roost(home, "mount", "add", name, str(share), "/mnt/sshfs", "--type", "reverse-sshfs")
        roost(home, "shell", name, "--", "cp", "/mnt/virtiofs/big.bin", "/root/big.bin")
        paths = {"guest_disk": "/root/big.bin", "9p": "/mnt/9p/big.bin",
                 "virtiofs": "/mnt/virtiofs/big.bin", "reverse-sshfs": "/mnt/sshfs/big.bin"}
        rates: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(args.runs):
            for kind, path in paths.items():
                rates[kind].append(guest_read_mib_s(home, name, path, size))
        disk = statistics.median(rates["guest_disk"])
        add_to_read: dict[str, list[float]] = {"virtiofs": [], "reverse-sshfs": []}
        for i in range(3):
            for kind in add_to_read:
                point = f"/mnt/timed-{kind}{i}"
                start = time.monotonic()
                roost(home, "mount", "add", name, str(share), point, "--type", kind)
                roost(home, "shell", name, "--", "cat", f"{point}/small.txt")
                add_to_read[kind].append(time.monotonic() - start)
                roost(home, "mount", "remove", name, point)
        starts, added = confinement_cost(share, 5)
        print(json.dumps({
            "size_mib": args.size_mib,
            "runs": args.runs,
            "read_mib_s": {k: round(statistics.median(v), 1) for k, v in rates.items()},
            "ratio_to_guest_disk": {k: round(statistics.median(v) / disk, 2)
                                    for k, v in rates.items() if k != "guest_disk"},
            "mount_add_to_first_read_s": {k: summary(v) for k, v in add_to_read.items()},
            "mount_add_to_first_read_before_confinement_s": {
                k: round(statistics.median(v) - added[k], 3) for k, v in add_to_read.items()},
            "confinement_daemon_start_s": starts,
            "confinement_added_s": added,
            "mount_add_goal_s": 1.0,
        }, indent=2))


if __name__ == "__main__":
    main()
