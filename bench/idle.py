#!/usr/bin/env python3
"""What keeping an instance costs the host, built-in image, one run.

* Idle: host agent RSS and CPU (share of one core) over --seconds with the
  guest idle, after a settle; QEMU's RSS against the guest's RAM in use
  (MemTotal - MemAvailable, read in the guest).
* QEMU's CPU (share of one host core) with the guest quiet, against the
  same VM while its guest agent's port watcher is active, which it is for
  5 s after anything forks in the guest (the baseline: the watcher rescanned
  ten times a second all the time before it learned to wait on process
  events). Interleaved windows of 4 s, quiet ones after 7 s without a
  command in the guest, active ones from 0.5 s after a `roost shell -- true`
  returned; min/median/max of 3 each.
* RAM backing: the guest writes 1 GiB into its RAM (a file in its tmpfs),
  once in roost's VM (memfd RAM, shared, as virtiofsd needs) and in the
  same machine started by the bench from the instance's own command line
  without roost, with file-backed RAM (ram.bin on ROOST_HOME's file
  system, shared: what roost used until it measured this) and with
  anonymous RAM (memory-backend-ram, the baseline: not shareable, so no
  virtiofs): for each, the time the write takes, the host's writeback while
  it writes and for 30 s after (/proc/vmstat nr_written), the disk the
  backing takes, and QEMU's RSS.

    .venv/bin/python bench/idle.py [--seconds 30]      # prints JSON
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    banner_seconds,
    free_port,
    host_facts,
    moved_argv,
    qemu_argv,
    roost,
    scratch_home,
    summary,
)

PAGE = os.sysconf("SC_PAGE_SIZE")
MEMORY_MIB = 2048
WRITE_MIB = 1024
# In the guest: 1 GiB into its tmpfs (its RAM), then how much RAM it uses.
WRITE_RAM = ("mkdir -p /mnt/fill && mount -t tmpfs -o size=1200m fill /mnt/fill && "
             f"dd if=/dev/zero of=/mnt/fill/x bs=1M count={WRITE_MIB} 2>/dev/null && "
             "grep -E 'MemTotal|MemAvailable' /proc/meminfo")


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _written_bytes() -> int:
    for line in Path("/proc/vmstat").read_text().splitlines():
        if line.startswith("nr_written "):
            return int(line.split()[1]) * PAGE
    return 0


def _guest_used(meminfo: str) -> int:
    kib = dict(re.findall(r"(\w+):\s+(\d+) kB", meminfo))
    return (int(kib["MemTotal"]) - int(kib["MemAvailable"])) * 1024


def idle_figures(home: Path, name: str, seconds: float) -> dict[str, Any]:
    ha = int((home / name / "ha.pid").read_text().split()[0])
    qemu = int((home / name / "qemu.pid").read_text().split()[0])
    time.sleep(10)  # settle: the guest's boot services, the first health samples
    cpu0, t0 = _cpu_seconds(ha), time.monotonic()
    samples = []
    while time.monotonic() - t0 < seconds:
        samples.append(_rss(ha))
        time.sleep(1)
    share = (_cpu_seconds(ha) - cpu0) / (time.monotonic() - t0)
    meminfo = roost(home, "shell", name, "--", "grep", "-E", "MemTotal|MemAvailable",
                    "/proc/meminfo")
    used = _guest_used(meminfo)
    return {
        "hostagent_rss_mb": round(max(samples) / 1e6, 1),
        "hostagent_rss_goal_mb": 45,
        "hostagent_cpu_share_of_a_core": round(share, 4),
        "hostagent_cpu_goal": 0.005,
        "qemu_rss_mb": round(_rss(qemu) / 1e6, 1),
        "guest_ram_in_use_mb": round(used / 1e6, 1),
        "qemu_rss_over_guest_use_mb": round((_rss(qemu) - used) / 1e6, 1),
        "seconds_sampled": seconds,
    }


def qemu_quiet_and_active(home: Path, name: str, rounds: int = 3,
                          window: float = 4.0) -> dict[str, Any]:
    """QEMU's CPU share in quiet and active windows, interleaved."""
    qemu = int((home / name / "qemu.pid").read_text().split()[0])

    def share() -> float:
        cpu0, t0 = _cpu_seconds(qemu), time.monotonic()
        time.sleep(window)
        return (_cpu_seconds(qemu) - cpu0) / (time.monotonic() - t0)

    quiet, active = [], []
    for _ in range(rounds):
        time.sleep(7)  # the watcher's 5 s of activity after the last command, and more
        quiet.append(share())
        roost(home, "shell", name, "--", "true")
        time.sleep(0.5)  # the SSH session's own end
        active.append(share())
    return {"qemu_cpu_share_quiet": summary(quiet, 4),
            "baseline_qemu_cpu_share_watcher_active": summary(active, 4),
            "quiet_over_active": round(statistics.median(quiet) / statistics.median(active), 3),
            "window_seconds": window}


def write_ram(ssh: list[str], qemu: int, backing: Path | None) -> dict[str, Any]:
    """The guest writes 1 GiB into its RAM: the host's writeback meanwhile
    and for 30 s after, the backing's disk use, QEMU's RSS."""
    written0, start = _written_bytes(), time.monotonic()
    out = subprocess.run([*ssh, WRITE_RAM], capture_output=True, text=True, check=True,
                         timeout=600).stdout
    wrote_s = time.monotonic() - start
    during = _written_bytes() - written0
    time.sleep(30)  # dirty pages of a shared file mapping are written back by now
    after = _written_bytes() - written0
    return {
        "guest_write_1gib_s": round(wrote_s, 2),
        "host_writeback_during_mb": round(during / 1e6, 1),
        "host_writeback_within_30s_mb": round(after / 1e6, 1),
        "backing_disk_mb": round(os.stat(backing).st_blocks * 512 / 1e6, 1) if backing else 0,
        "qemu_rss_mb": round(_rss(qemu) / 1e6, 1),
        "guest_ram_in_use_mb": round(_guest_used(out) / 1e6, 1),
    }


def other_backing(home: Path, name: str, scratch: Path, backing: str) -> dict[str, Any]:
    """The instance's own machine with RAM backed by `backing` ("file" or
    "ram"), on a copy-on-write disk over its own."""
    inst = home / name
    floor = scratch / backing
    floor.mkdir()
    ram_file = floor / "ram.bin"
    shutil.copy(inst / "cidata.iso", floor / "cidata.iso")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(inst / "disk.qcow2"), str(floor / "disk.qcow2")], check=True)
    port = free_port()
    memory = (f"memory-backend-file,id=mem,size={MEMORY_MIB}M,share=on,mem-path={ram_file}"
              if backing == "file" else f"memory-backend-ram,id=mem,size={MEMORY_MIB}M")
    argv = [memory if a.startswith("memory-backend-memfd,") else a
            for a in moved_argv(qemu_argv(home, name), str(inst), str(floor), port)]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        banner_seconds(port, proc, start, 600, then_ssh=True)
        ssh = ["ssh", "-p", str(port), "-i", str(home / "_config" / "user"),
               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectionAttempts=30",
               "root@127.0.0.1"]
        deadline = time.monotonic() + 120
        while subprocess.run([*ssh, "true"], capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no SSH login into the {backing}-backed machine")
            time.sleep(0.5)
        return write_ram(ssh, proc.pid, ram_file if backing == "file" else None)
    finally:
        proc.kill()  # ours: started above
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    facts = host_facts()
    scratch = Path(tempfile.mkdtemp(prefix="rbench-idle-", dir="/tmp"))
    try:
        with scratch_home() as home:
            name = "idle"
            roost(home, "create", name, "--memory", f"{MEMORY_MIB}MiB")
            roost(home, "start", name, "--timeout", "600")
            idle = idle_figures(home, name, args.seconds)
            idle.update(qemu_quiet_and_active(home, name))
            qemu = int((home / name / "qemu.pid").read_text().split()[0])
            ssh = ["ssh", "-F", str(home / name / "ssh.config"), f"roost-{name}"]
            memfd = write_ram(ssh, qemu, None)
            roost(home, "stop", name)
            file_backed = other_backing(home, name, scratch, "file")
            anonymous = other_backing(home, name, scratch, "ram")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({
        **facts, "guest_memory_mib": MEMORY_MIB, "idle": idle,
        "ram_backing": {"roost_memfd": memfd, "file_backed_ram_bin": file_backed,
                        "baseline_anonymous_ram": anonymous},
    }, indent=2))


if __name__ == "__main__":
    main()
