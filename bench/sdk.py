#!/usr/bin/env python3
"""SDK benchmark (built-in image, this machine), each figure beside a
baseline measured in the same run, runs interleaved (A B A B):

* create: `Sandbox.create()` to the first command's output, against the
  CLI doing the same (`roost start NEW` then `roost exec NEW -- echo`);
* fork: `Sandbox.fork(paused)` to the first output, against resuming that
  same paused source to its first output (and against `create`); and
  `Sandbox.fork(snapshot)` of the running source (a snapshot with its
  memory) to the fork's first output, against the same two;
* pause and resume: `sb.pause()`, and `Sandbox.connect()` (auto-resume) to
  the first output, against a cold `sb.stop()` + `Sandbox.connect(start=True)`
  to the first output;
* files: `sb.files.write` and `.read` of a random file, against `roost copy`
  of the same file in (host to guest) and out;
* ten sandboxes created in a loop from one template: their QEMU and host
  agent processes' total PSS and RSS, the guest RAM they were given, and
  the disk their directories take against the base image they share.

    .venv/bin/python bench/sdk.py [--runs 3] [--file-mib 64] [--many 10]   # prints JSON
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import host_facts, roost, scratch_home, summary

MEMORY = "512MiB"


def first_output(sb: object) -> None:
    result = sb.commands.run(["echo", "ready"])  # type: ignore[attr-defined]
    assert result.text == "ready\n", result


def pss_rss_kib(pid: int) -> tuple[int, int]:
    pss = rss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
    return pss, rss


def disk_kib(path: Path) -> int:
    """Blocks really used (sparse files count what they hold)."""
    return sum(p.stat().st_blocks // 2 for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--file-mib", type=int, default=64)
    parser.add_argument("--many", type=int, default=10)
    args = parser.parse_args()
    facts = host_facts()
    with scratch_home() as home:
        os.environ["ROOST_HOME"] = str(home)
        from roost.sdk import Sandbox

        Sandbox.create(name="warm", memory=MEMORY).kill()  # the image built, caches warm

        create_s, cli_s, fork_s, fork_resume_s, snap_fork_s = [], [], [], [], []
        for i in range(args.runs):  # SDK create, CLI, fork, ...
            start = time.monotonic()
            sb = Sandbox.create(name=f"c{i}", memory=MEMORY)
            first_output(sb)
            create_s.append(time.monotonic() - start)

            start = time.monotonic()
            roost(home, "create", f"k{i}", "--memory", MEMORY, "--set",
                  "guestAgent.allowExec=true")
            roost(home, "start", f"k{i}")
            out = roost(home, "exec", f"k{i}", "--", "echo", "ready")
            assert out == "ready\n"
            cli_s.append(time.monotonic() - start)
            roost(home, "delete", "--force", f"k{i}")

            snap = sb.snapshot(f"s{i}")
            start = time.monotonic()
            kid = Sandbox.fork(snap, name=f"s{i}")
            first_output(kid)
            snap_fork_s.append(time.monotonic() - start)
            kid.kill()

            sb.pause()
            start = time.monotonic()
            fork = Sandbox.fork(sb, name=f"f{i}")
            first_output(fork)
            fork_s.append(time.monotonic() - start)
            fork.kill()
            start = time.monotonic()
            sb = Sandbox.connect(f"c{i}")  # the same source, resumed: the baseline
            first_output(sb)
            fork_resume_s.append(time.monotonic() - start)
            sb.kill()

        sb = Sandbox.create(name="pr", memory=MEMORY)
        pause_s, resume_s, cold_s = [], [], []
        for _ in range(args.runs):  # pause + resume, stop + start, ...
            start = time.monotonic()
            sb.pause()
            pause_s.append(time.monotonic() - start)
            start = time.monotonic()
            sb = Sandbox.connect("pr")
            first_output(sb)
            resume_s.append(time.monotonic() - start)
            sb.stop()
            start = time.monotonic()
            sb = Sandbox.connect("pr", start=True)
            first_output(sb)
            cold_s.append(time.monotonic() - start)

        data = os.urandom(args.file_mib * 1024 * 1024)
        local = home / "payload.bin"
        local.write_bytes(data)
        back = home / "back.bin"
        mib = len(data) / 1024 / 1024
        sdk_in, sdk_out, copy_in, copy_out = [], [], [], []
        for i in range(args.runs):
            start = time.monotonic()
            sb.files.write(f"/root/sdk{i}.bin", data)
            sdk_in.append(mib / (time.monotonic() - start))
            start = time.monotonic()
            got = sb.files.read(f"/root/sdk{i}.bin")
            sdk_out.append(mib / (time.monotonic() - start))
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
            start = time.monotonic()
            roost(home, "copy", str(local), f"pr:/root/cp{i}.bin")
            copy_in.append(mib / (time.monotonic() - start))
            start = time.monotonic()
            roost(home, "copy", f"pr:/root/cp{i}.bin", str(back))
            copy_out.append(mib / (time.monotonic() - start))
            assert back.read_bytes() == data
            back.unlink()
            sb.commands.run(["rm", "-f", f"/root/sdk{i}.bin", f"/root/cp{i}.bin"])
        backend = "rsync" if subprocess.run(["which", "rsync"], capture_output=True
                                            ).returncode == 0 else "scp"
        sb.kill()

        start = time.monotonic()
        many = [Sandbox.create(name=f"m{i}", memory=MEMORY) for i in range(args.many)]
        for s in many:
            first_output(s)
        many_s = time.monotonic() - start
        time.sleep(5)  # past the boot's own page faults
        pss = rss = 0
        per_one: list[int] = []
        for s in many:
            one = 0
            for pidfile in ("qemu.pid", "ha.pid"):
                pid = int((s.instance.dir / pidfile).read_text().split()[0])
                p, r = pss_rss_kib(pid)
                pss, rss, one = pss + p, rss + r, one + r
            per_one.append(one)
        dirs_kib = sum(disk_kib(s.instance.dir) for s in many)
        base = json.loads((many[0].instance.dir / "image.json").read_text()) \
            if (many[0].instance.dir / "image.json").exists() else {}
        backing = subprocess.run(["qemu-img", "info", "--output=json", "-U",
                                  str(many[0].instance.disk)], capture_output=True,
                                 text=True, check=True)
        backing_file = json.loads(backing.stdout).get("backing-filename")
        base_kib = Path(backing_file).stat().st_blocks // 2 if backing_file else 0
        shared = all(json.loads(subprocess.run(
            ["qemu-img", "info", "--output=json", "-U", str(s.instance.disk)],
            capture_output=True, text=True, check=True).stdout).get("backing-filename")
            == backing_file for s in many)
        for s in many:
            s.kill()

    def ratio(a: list[float], b: list[float]) -> float:
        import statistics

        return round(statistics.median(a) / statistics.median(b), 3)

    print(json.dumps({
        **facts, "runs": args.runs, "template": "default (built-in image)", "memory": MEMORY,
        "create_to_first_output_s": summary(create_s),
        "baseline_cli_start_then_exec_s": summary(cli_s),
        "create_vs_cli": ratio(create_s, cli_s),
        "fork_of_paused_to_first_output_s": summary(fork_s),
        "baseline_resume_of_the_source_to_first_output_s": summary(fork_resume_s),
        "fork_vs_resume": ratio(fork_s, fork_resume_s),
        "fork_vs_create": ratio(fork_s, create_s),
        "fork_of_running_snapshot_to_first_output_s": summary(snap_fork_s),
        "snapshot_fork_vs_resume": ratio(snap_fork_s, fork_resume_s),
        "snapshot_fork_vs_fork_of_paused": ratio(snap_fork_s, fork_s),
        "pause_s": summary(pause_s),
        "resume_to_first_output_s": summary(resume_s),
        "baseline_cold_start_to_first_output_s": summary(cold_s),
        "resume_vs_cold": ratio(resume_s, cold_s),
        "file_mib": args.file_mib,
        "files_write_mib_s": summary(sdk_in, 1), "files_read_mib_s": summary(sdk_out, 1),
        f"baseline_roost_copy_in_mib_s ({backend})": summary(copy_in, 1),
        f"baseline_roost_copy_out_mib_s ({backend})": summary(copy_out, 1),
        "files_write_vs_copy": ratio(sdk_in, copy_in),
        "files_read_vs_copy": ratio(sdk_out, copy_out),
        "many": {
            "sandboxes": args.many, "created_in_a_loop_to_first_output_s": round(many_s, 2),
            "total_pss_mib": round(pss / 1024, 1), "total_rss_mib": round(rss / 1024, 1),
            "baseline_one_rss_mib_times_n": round(per_one[0] * args.many / 1024, 1),
            "guest_ram_given_mib": 512 * args.many,
            "instance_dirs_disk_mib": round(dirs_kib / 1024, 1),
            "shared_base_image_mib": round(base_kib / 1024, 1),
            "all_share_one_base": shared, "image": base.get("image") or base.get("name"),
        },
        "python": sys.version.split()[0],
    }, indent=2))


if __name__ == "__main__":
    main()
