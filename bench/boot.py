#!/usr/bin/env python3
"""Boot benchmark: `roost start` to Running against two floors, in one run,
runs interleaved (kernel floor, machine floor, roost; again), built-in image.

* machine floor: the instance's own QEMU command line (roost's devices,
  disk, RAM backing, sandbox) on a fresh copy-on-write disk, started by
  the bench without roost, to the SSH banner on its forwarded port, found
  by a probe that spares the guest nothing (bench/common.banner_seconds):
  what roost adds on top is the host agent, readiness and the CLI.
* kernel floor: the same kernel and initramfs on a bare machine (no disk,
  NIC, virtio-serial, root ports or RAM file) to an init that prints a
  marker at once: no initramfs init, no root mount, no switch_root. Only
  the cost of booting the kernel here.

Also: the guest sshd's banner to the Running event (from the host agent's
events), each readiness requirement's seconds, the guest's own boot
timeline, and `roost ls` with 5 instances, 2 of them running, against bare
interpreter start-up (`python -c pass`), interleaved.

    .venv/bin/python bench/boot.py [--runs N]      # prints JSON
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from common import host_facts, machine_floor, scratch_home, summary

from roost.driver.qemu.accel import detect_accel
from roost.driver.qemu.cmdline import KERNEL_APPEND
from roost.driver.qemu.machine import find_qemu
from roost.image.builtin import BuiltinImage, ensure_builtin_image
from roost.image.cpio import NewcWriter

MARKER = "ROOST-FLOOR-MARKER"
CPUS, MEMORY_MIB = 2, 1024


def floor_initrd(image: BuiltinImage, out: Path) -> Path:
    """The image's initramfs plus a second archive holding /floor-init."""
    extra = io.BytesIO()
    w = NewcWriter(extra)
    w.add_file("floor-init", (
        "#!/bin/busybox sh\n"
        f"/bin/busybox echo {MARKER}\n"
        "/bin/busybox poweroff -f\n"
    ).encode(), 0o755)
    w.close()
    out.write_bytes(image.initrd.read_bytes() + extra.getvalue())
    return out


def boot_floor(image: BuiltinImage, initrd: Path, accel: str) -> float:
    accel_args = (["-accel", "kvm", "-cpu", "host"] if accel == "kvm"
                  else ["-accel", "tcg,thread=multi,tb-size=512"])
    argv = [
        find_qemu(), "-machine", "q35", *accel_args, "-smp", str(CPUS), "-m", f"{MEMORY_MIB}M",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(initrd),
        "-append", f"{KERNEL_APPEND} rdinit=/floor-init", "-serial", "stdio",
    ]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    elapsed = None
    for raw in proc.stdout:
        if MARKER.encode() in raw:
            elapsed = time.monotonic() - start
            break
    proc.wait(timeout=60)
    if elapsed is None:
        raise RuntimeError("the floor guest never printed its marker")
    return elapsed


def roost(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "roost", *args], text=True, capture_output=True,
                          env={**os.environ, "ROOST_HOME": str(home)}, check=True)


def _event_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00")).timestamp()


def banner_to_running(home: Path, name: str) -> float:
    """From the event that follows the banner (the SSH command phase) to Running."""
    events = [json.loads(line) for line in (home / name / "ha.stdout.log").read_text().splitlines()
              if line.strip()]
    after_banner = next(e for e in events
                        if e["status"].get("phase") == "waiting: a command runs over SSH")
    running = next(e for e in events if e["status"].get("running"))
    return _event_time(running) - _event_time(after_banner)


def guest_timeline(home: Path, name: str) -> dict[str, float]:
    """The guest's own boot marks (seconds since its kernel started)."""
    out = roost(home, "shell", name, "--", "cat", "/run/roost/boot-timeline").stdout
    marks = {}
    for line in out.splitlines():
        seconds, _, what = line.partition(" ")
        marks[what] = float(seconds)
    return marks


def start_once(home: Path, name: str) -> tuple[float, float, dict[str, float], dict[str, float]]:
    start = time.monotonic()
    roost(home, "start", name, "--timeout", "300")
    wall = time.monotonic() - start
    info = json.loads(roost(home, "info", name, "--json").stdout)
    reqs = {r["name"]: r["seconds"] for r in info["hostagent"]["requirements"]}
    b2r = banner_to_running(home, name)
    timeline = guest_timeline(home, name)
    roost(home, "stop", name)
    return wall, b2r, reqs, timeline


def figure(roost_s: list[float], floor_s: list[float], goal: float | None) -> dict[str, Any]:
    ratio = statistics.median(roost_s) / statistics.median(floor_s)
    return {"roost_s": summary(roost_s), "floor_s": summary(floor_s),
            "ratio": round(ratio, 3), "goal": goal}


def interleaved(argvs: dict[str, list[str]], env: dict[str, str], runs: int
                ) -> dict[str, list[float]]:
    """Each command `runs` times, taking turns (A B A B ...)."""
    out: dict[str, list[float]] = {k: [] for k in argvs}
    for _ in range(runs):
        for key, argv in argvs.items():
            start = time.monotonic()
            subprocess.run(argv, env=env, check=True, capture_output=True)
            out[key].append(time.monotonic() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    facts = host_facts()
    image = ensure_builtin_image()
    accel = detect_accel(find_qemu())
    scratch = Path(tempfile.mkdtemp(prefix="rbench-floor-", dir="/tmp"))
    with scratch_home() as home:
        initrd = floor_initrd(image, scratch / "floor-initrd")
        roost(home, "create", "bench", "--cpus", str(CPUS), "--memory", f"{MEMORY_MIB}MiB")
        # The first start also makes the instance's disk: reported apart.
        first_start, _, _, _ = start_once(home, "bench")
        kernel, machine, starts, b2rs, reqs, timelines = [], [], [], [], [], []
        for _ in range(args.runs):  # interleaved: each sees the same machine load
            kernel.append(boot_floor(image, initrd, accel))
            machine.append(machine_floor(home, "bench", scratch))
            wall, b2r, r, timeline = start_once(home, "bench")
            starts.append(wall)
            b2rs.append(b2r)
            reqs.append(r)
            timelines.append(timeline)
        for i in range(4):
            roost(home, "create", f"idle{i}")
        roost(home, "start", "bench", "--timeout", "300")
        roost(home, "start", "idle0", "--timeout", "300")
        env = {**os.environ, "ROOST_HOME": str(home)}
        ls = interleaved({"ls": [sys.executable, "-m", "roost", "ls"],
                          "python": [sys.executable, "-c", "pass"]}, env, 20)
        listed = json.loads(roost(home, "ls", "--json").stdout)
        running = sum(1 for row in listed if row["status"] == "Running")
    subprocess.run(["rm", "-rf", str(scratch)], check=False)
    print(json.dumps({
        "accel": accel, **facts, "runs": args.runs, "cpus_per_guest": CPUS,
        "memory_mib_per_guest": MEMORY_MIB,
        "start_to_running_over_machine_floor": figure(starts, machine, 1.10),
        "start_to_running_over_kernel_floor": figure(starts, kernel, None),
        "start_to_running_goal_s": 4.0,
        "first_start_to_running_s": round(first_start, 3),
        "banner_to_running_s": {**summary(b2rs), "goal_median": 0.1},
        "requirement_seconds": {k: summary([r[k] for r in reqs]) for k in reqs[0]},
        "guest_boot_timeline_s": {k: summary([t[k] for t in timelines if k in t])
                                  for k in timelines[0]},
        "ls": {"instances": len(listed), "running": running,
               "roost_s": summary(ls["ls"]), "baseline_python_startup_s": summary(ls["python"]),
               "goal_s": 0.10},
        "image_bytes": {p.name: p.stat().st_size for p in
                        (image.kernel, image.initrd, image.disk)},
    }, indent=2))


if __name__ == "__main__":
    main()
