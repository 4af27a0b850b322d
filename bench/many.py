#!/usr/bin/env python3
"""Four instances started together against one alone (built-in image).

Each round: one instance started alone, to Running, stopped; then four
started at once (four `roost start` processes), wall time until the last is
Running, each checked Running with an SSH command; all stopped. Rounds
interleave the two. The ratio is what sharing this machine's CPUs costs
(under TCG every guest vCPU is a host thread).

    .venv/bin/python bench/many.py [--runs 2] [--count 4]      # prints JSON
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import host_facts, roost, scratch_home, summary

MEMORY = "512MiB"


def start_all(home: Path, names: list[str]) -> float:
    env = {**os.environ, "ROOST_HOME": str(home)}
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "roost", "start", n, "--timeout", "900"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for n in names]
    for n, p in zip(names, procs, strict=True):
        _, err = p.communicate(timeout=1000)
        if p.returncode != 0:
            raise RuntimeError(f"roost start {n}: {err.strip()[-500:]}")
    wall = time.monotonic() - start
    for n in names:
        roost(home, "shell", n, "--", "true")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--count", type=int, default=4)
    args = parser.parse_args()
    facts = host_facts()
    names = [f"m{i}" for i in range(args.count)]
    with scratch_home() as home:
        for n in names:
            roost(home, "create", n, "--memory", MEMORY, "--cpus", "1")
        start_all(home, names)  # the first starts make the disks
        for n in names:
            roost(home, "stop", n)
        alone, together = [], []
        for _ in range(args.runs):
            alone.append(start_all(home, names[:1]))
            roost(home, "stop", names[0])
            together.append(start_all(home, names))
            statuses = {r["name"]: r["status"] for r in
                        json.loads(roost(home, "ls", "--json"))}
            assert all(statuses[n] == "Running" for n in names), statuses
            for n in names:
                roost(home, "stop", n)
    print(json.dumps({
        **facts, "instances": args.count, "memory_each": MEMORY, "cpus_each": 1,
        "runs": args.runs,
        "one_alone_to_running_s": summary(alone),
        "all_together_to_running_s": summary(together),
        "ratio_together_over_alone": round(statistics.median(together)
                                           / statistics.median(alone), 2),
    }, indent=2))


if __name__ == "__main__":
    main()
