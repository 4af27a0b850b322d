#!/usr/bin/env python3
"""Resume benchmark: `roost resume` against a cold `roost start`, each to
the same readiness bar, interleaved on one VM (built-in image).

The bar: the command has returned (Running), an SSH command has run
(`ssh -F ssh.config roost-NAME true`) and the guest agent has answered
(GET /v1/guest/status on ha.sock: its idle/busy sample). A cold start
passes SSH and the agent before Running; a resume declares Running after
sshd's banner and the guest agent's `wake`, and its first SSH command makes
a new login (the old connection went with the old QEMU). Reported apart:
each to Running, and the restored guest agent's first answer after the
resume command returned; QEMU's resident memory (RSS, and of it the guest
RAM's shared pages) once the bar is passed, after each. Also `roost diff`
over 10,000 changed files.

    .venv/bin/python bench/resume.py [--runs 5]      # prints JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

from common import host_facts, roost, scratch_home, summary


def qemu_memory_mib(home: Path, name: str) -> tuple[float, float]:
    """QEMU's (VmRSS, RssShmem) in MiB, from /proc."""
    pid = int((home / name / "qemu.pid").read_text())
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["RssShmem"].split()[0]) / 1024)


def to_bar(home: Path, name: str, command: str) -> tuple[float, float, float]:
    """`roost COMMAND NAME` then the bar, asked by this process directly (no
    CLI start-up in the figure): (to Running, to the bar, the guest agent's
    first answer after Running)."""
    from roost.ops import hostapi

    start = time.monotonic()
    roost(home, command, name, "--timeout", "600")
    running = time.monotonic()
    hostapi.request(home / name / "ha.sock", "GET", "/v1/guest/status", timeout=30)
    agent = time.monotonic()
    subprocess.run(["ssh", "-F", str(home / name / "ssh.config"), f"roost-{name}", "true"],
                   check=True, capture_output=True, timeout=60)
    bar = time.monotonic()
    return running - start, bar - start, agent - running


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--files", type=int, default=10000)
    args = parser.parse_args()
    facts = host_facts()
    with scratch_home() as home:
        (home / "c.yaml").write_text("readOnlyRoot: true\nmemory: 1GiB\n")
        name = "rs"
        roost(home, "create", name, "--config", str(home / "c.yaml"))
        roost(home, "start", name, "--timeout", "600")  # the first start makes the disk
        cold: list[tuple[float, float, float]] = []
        warm: list[tuple[float, float, float]] = []
        suspends = []
        cold_memory: list[tuple[float, float]] = []
        warm_memory: list[tuple[float, float]] = []
        for _ in range(args.runs):  # cold, resume, cold, resume ...
            roost(home, "stop", name)
            cold.append(to_bar(home, name, "start"))
            cold_memory.append(qemu_memory_mib(home, name))
            start = time.monotonic()
            roost(home, "suspend", name)
            suspends.append(time.monotonic() - start)
            warm.append(to_bar(home, name, "resume"))
            warm_memory.append(qemu_memory_mib(home, name))
        script = (f"import os\nos.makedirs('/root/many', exist_ok=True)\n"
                  f"for i in range({args.files}):\n"
                  f"    open('/root/many/f%05d' % i, 'w').write('x')\n")
        roost(home, "shell", name, "--", "python3", "-c", script)
        start = time.monotonic()
        changes = json.loads(roost(home, "diff", name, "--json"))
        diff_seconds = time.monotonic() - start

    def median(rows: list[tuple[float, float, float]], i: int) -> float:
        return statistics.median(r[i] for r in rows)

    print(json.dumps({
        **facts, "runs": args.runs, "order": "interleaved: stop+start, suspend+resume",
        "cold_start_to_bar_s": summary([r[1] for r in cold]),
        "resume_to_bar_s": summary([r[1] for r in warm]),
        "ratio_resume_over_cold_at_the_bar": round(median(warm, 1) / median(cold, 1), 3),
        "ratio_goal": 0.1,
        "cold_start_to_running_s": summary([r[0] for r in cold]),
        "resume_to_running_s": summary([r[0] for r in warm]),
        "guest_agent_first_answer_after_resume_s": summary([r[2] for r in warm]),
        "guest_agent_answer_after_cold_start_s": summary([r[2] for r in cold]),
        "suspend_s": summary(suspends),
        "guest_ram_mib": 1024,
        "qemu_rss_mib_after_cold_start": summary([m[0] for m in cold_memory]),
        "qemu_rss_mib_after_resume": summary([m[0] for m in warm_memory]),
        "qemu_guest_ram_resident_mib_after_cold_start": summary([m[1] for m in cold_memory]),
        "qemu_guest_ram_resident_mib_after_resume": summary([m[1] for m in warm_memory]),
        "diff_files_changed": args.files,
        "diff_entries_reported": len(changes),
        "diff_s": round(diff_seconds, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
