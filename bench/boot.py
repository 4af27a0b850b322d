#!/usr/bin/env python3
"""Boot benchmark: `roost start` to Running against the floor, in one run.

The floor is the same kernel and initramfs booted by plain QEMU with the
same machine, accelerator, CPUs and memory, to an init that prints a marker
and powers off: the cost of booting a kernel here, with nothing of roost.
Also: time from the guest sshd's banner to the Running event, and `roost ls`
wall time with 5 instances defined (against bare interpreter start-up).

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
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from common import scratch_home, summary

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


def time_command(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.monotonic()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        out.append(time.monotonic() - start)
    return out



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    image = ensure_builtin_image()
    accel = detect_accel(find_qemu())
    with scratch_home() as home:
        initrd = floor_initrd(image, home / "floor-initrd")
        roost(home, "create", "bench", "--cpus", str(CPUS), "--memory", f"{MEMORY_MIB}MiB")
        # The first start also makes the instance's disk: reported apart.
        first_start, _, _, _ = start_once(home, "bench")
        floors, starts, b2rs, reqs, timelines = [], [], [], [], []
        for _ in range(args.runs):  # interleaved, so both see the same machine load
            floors.append(boot_floor(image, initrd, accel))
            wall, b2r, r, timeline = start_once(home, "bench")
            starts.append(wall)
            b2rs.append(b2r)
            reqs.append(r)
            timelines.append(timeline)
        for i in range(4):
            roost(home, "create", f"idle{i}")
        env = {**os.environ, "ROOST_HOME": str(home)}
        ls_times = time_command([sys.executable, "-m", "roost", "ls"], env, 10)
        py_times = time_command([sys.executable, "-c", "pass"], env, 10)
        ratio = statistics.median(starts) / statistics.median(floors)
        print(json.dumps({
            "accel": accel,
            "runs": args.runs,
            "floor_boot_to_marker_s": summary(floors),
            "roost_first_start_to_running_s": round(first_start, 3),
            "roost_start_to_running_s": summary(starts),
            "ratio_start_over_floor": round(ratio, 2),
            "ratio_goal": 1.5,
            "banner_to_running_s": summary(b2rs),
            "requirement_seconds": {k: summary([r[k] for r in reqs]) for k in reqs[0]},
            "guest_boot_timeline_s": {k: summary([t[k] for t in timelines if k in t])
                                      for k in timelines[0]},
            "ls_5_instances_s": summary(ls_times),
            "ls_goal_s": 0.15,
            "baseline_python_startup_s": summary(py_times),
            "image_bytes": {p.name: p.stat().st_size for p in
                            (image.kernel, image.initrd, image.disk)},
        }, indent=2))


if __name__ == "__main__":
    main()
