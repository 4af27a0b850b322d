#!/usr/bin/env python3
"""Mount benchmark: sequential reads through each mount type against the
guest's own disk, in one VM and one run, and the time from `roost mount add`
to the first successful read in the guest.

The VM boots with a static 9p share (9p cannot be hot-plugged on QEMU 7.2);
virtiofs and reverse-sshfs are hot-mounted on the same host folder. Before
each read the guest drops its page cache; the file is SIZE of random bytes.

    .venv/bin/python bench/mounts.py [--size-mib 256] [--runs 2]   # prints JSON
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
        add_to_read = []
        for i in range(3):
            point = f"/mnt/timed{i}"
            start = time.monotonic()
            roost(home, "mount", "add", name, str(share), point, "--type", "virtiofs")
            roost(home, "shell", name, "--", "cat", f"{point}/small.txt")
            add_to_read.append(time.monotonic() - start)
            roost(home, "mount", "remove", name, point)
        print(json.dumps({
            "size_mib": args.size_mib,
            "runs": args.runs,
            "read_mib_s": {k: round(statistics.median(v), 1) for k, v in rates.items()},
            "ratio_to_guest_disk": {k: round(statistics.median(v) / disk, 2)
                                    for k, v in rates.items() if k != "guest_disk"},
            "virtiofs_mount_add_to_first_read_s": summary(add_to_read),
            "mount_add_goal_s": 2.0,
        }, indent=2))


if __name__ == "__main__":
    main()
