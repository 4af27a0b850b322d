#!/usr/bin/env python3
"""Resume benchmark: `roost resume` to Running against `roost start` (cold
boot) to Running, in one run on one VM; also the guest agent's first answer
after each, and `roost diff` over 10,000 changed files.

    .venv/bin/python bench/resume.py [--runs 3]      # prints JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import roost, scratch_home, summary


def timed(home: Path, *args: str) -> float:
    start = time.monotonic()
    roost(home, *args)
    return time.monotonic() - start



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--files", type=int, default=10000)
    args = parser.parse_args()
    with scratch_home() as home:
        (home / "c.yaml").write_text("readOnlyRoot: true\nmemory: 1GiB\n")
        name = "rs"
        roost(home, "create", name, "--config", str(home / "c.yaml"))
        roost(home, "start", name)  # the first start makes the disk
        colds, resumes, suspends = [], [], []
        for _ in range(args.runs):
            roost(home, "stop", name)
            colds.append(timed(home, "start", name))
            suspends.append(timed(home, "suspend", name))
            resumes.append(timed(home, "resume", name))
        script = (f"import os\nos.makedirs('/root/many', exist_ok=True)\n"
                  f"for i in range({args.files}):\n"
                  f"    open('/root/many/f%05d' % i, 'w').write('x')\n")
        roost(home, "shell", name, "--", "python3", "-c", script)
        start = time.monotonic()
        changes = json.loads(roost(home, "diff", name, "--json"))
        diff_seconds = time.monotonic() - start
        ratio = statistics.median(resumes) / statistics.median(colds)
        print(json.dumps({
            "runs": args.runs,
            "cold_start_to_running_s": summary(colds),
            "resume_to_running_s": summary(resumes),
            "ratio_resume_over_cold": round(ratio, 3),
            "ratio_goal": 0.1,
            "suspend_s": summary(suspends),
            "diff_files_changed": args.files,
            "diff_entries_reported": len(changes),
            "diff_s": round(diff_seconds, 3),
        }, indent=2))


if __name__ == "__main__":
    main()
