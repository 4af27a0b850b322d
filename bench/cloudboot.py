#!/usr/bin/env python3
"""Cloud image benchmark.

The boot figure: `roost start` of a new debian-12 instance to Running
(every requirement, cloud-init finished included) against floors measured
in the same run: the same image and the same QEMU command line (taken from
the roost run: its devices, seed, RAM backing), launched by this script
without roost on a fresh copy-on-write disk, (1) to the first SSH banner on
the forwarded port (one probe connection at a time), as issue 9 defines it,
and (2) on to cloud-init finished (result.json, waited for in the guest
over one SSH login), the bar Running itself has. Runs interleave A B A B.
Also reported: when cloud-init finished (host agent start to the final
requirement) and the guest's own view (systemd-analyze).

The download figure: roost's fetch (the real code
path: streaming, sha256 over the bytes, format detection, the cache entry)
against `curl -o` of the same file, both from one local HTTP server (a
subprocess serving with sendfile, so that the clients are what is
measured), interleaved A B A B; also the fetch without a digest (C), which
is the transfer without the sha256 that curl does not do.

    .venv/bin/python bench/cloudboot.py [--runs 3] [--mib 200] [--boot-runs 2] [--no-boot]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from common import banner_seconds, free_port, moved_argv, qemu_argv, scratch_home, summary
from common import roost as run_roost

MIB = 1024**2


class _SendfileHandler(SimpleHTTPRequestHandler):
    def copyfile(self, source: Any, outputfile: Any) -> None:
        self.connection.sendfile(source)

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(directory: str) -> None:
    """The server process: prints its port, serves `directory` until killed."""
    os.chdir(directory)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _SendfileHandler)
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()


def make_image(path: Path, mib: int) -> str:
    """A raw disk of incompressible data (boot sector first); its sha256 digest."""
    rng = random.Random(1)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(mib):
            chunk = bytearray(rng.randbytes(MIB))
            if i == 0:
                chunk[:3], chunk[510:512] = b"\xeb\x63\x90", b"\x55\xaa"
            f.write(chunk)
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _timed_roost(url: str, digest: str | None, cache: Path) -> tuple[float, float]:
    """Wall and CPU seconds (this process: every thread of the fetch)."""
    from roost.image.cloud import fetch_file

    os.environ["ROOST_CACHE"] = str(cache)
    cpu, start = _cpu(resource.RUSAGE_SELF), time.monotonic()
    got = fetch_file(url, digest)
    seconds = time.monotonic() - start
    cpu = _cpu(resource.RUSAGE_SELF) - cpu
    assert got.format == "raw"
    shutil.rmtree(cache)
    return seconds, cpu


def _timed_curl(url: str, out: Path) -> tuple[float, float]:
    """Wall and CPU seconds (the curl process, once waited for)."""
    cpu, start = _cpu(resource.RUSAGE_CHILDREN), time.monotonic()
    subprocess.run(["curl", "-sSf", "-o", str(out), url], check=True)
    seconds = time.monotonic() - start
    cpu = _cpu(resource.RUSAGE_CHILDREN) - cpu
    out.unlink()
    return seconds, cpu


def download_figures(runs: int = 3, mib: int = 200) -> dict[str, Any]:
    if shutil.which("curl") is None:
        raise SystemExit("curl is needed (scripts/setup.sh installs it)")
    scratch = Path(tempfile.mkdtemp(prefix="rbench-dl-", dir="/tmp"))
    server: subprocess.Popen[str] | None = None
    try:
        (scratch / "www").mkdir()
        digest = make_image(scratch / "www" / "disk.img", mib)
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(scratch / "www")],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        url = f"http://127.0.0.1:{server.stdout.readline().strip()}/disk.img"
        _timed_curl(url, scratch / "warm.img")  # page cache and server warm for both
        roost, curl, unverified = [], [], []
        for _ in range(runs):
            roost.append(_timed_roost(url, digest, scratch / "cache"))
            curl.append(_timed_curl(url, scratch / "curl.img"))
            unverified.append(_timed_roost(url, None, scratch / "cache"))
    finally:
        if server is not None:
            server.kill()
            server.wait()
        shutil.rmtree(scratch, ignore_errors=True)
    roost_s, curl_s = [w for w, _ in roost], [w for w, _ in curl]
    return {
        "file_mib": mib, "runs": runs,
        "roost_s": summary(roost_s), "curl_s": summary(curl_s),
        # roost also hashes every byte (sha256); on a busy host the wall
        # times follow these.
        "roost_cpu_s": summary([c for _, c in roost]),
        "curl_cpu_s": summary([c for _, c in curl]),
        # The same fetch of a location given without a digest: the transfer alone.
        "roost_no_digest_s": summary([w for w, _ in unverified]),
        "roost_no_digest_cpu_s": summary([c for _, c in unverified]),
        "roost_mib_per_s": summary([mib / s for s in roost_s], 1),
        "curl_mib_per_s": summary([mib / s for s in curl_s], 1),
        "throughput_ratio_roost_over_curl": round(
            statistics.median(curl_s) / statistics.median(roost_s), 3),
        "throughput_ratio_no_digest_over_curl": round(
            statistics.median(curl_s) / statistics.median([w for w, _ in unverified]), 3),
        "ratio_goal": 0.9,
    }


def _events(home: Path, name: str) -> list[dict[str, Any]]:
    from datetime import datetime

    out = []
    for line in (home / name / "ha.stdout.log").read_text().splitlines():
        event = json.loads(line)
        event["t"] = datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()
        out.append(event)
    return out


def _roost_boot(home: Path, name: str) -> dict[str, Any]:
    """One `roost start` of a new debian-12 instance; its figures and its machine."""
    run_roost(home, "create", name, "--template", "debian-12", "--memory", "1GiB",
              "--disk", "4GiB")
    started = time.monotonic()
    run_roost(home, "start", name, "--timeout", "900")
    seconds = time.monotonic() - started
    events = _events(home, name)
    t0 = float(events[0]["t"])

    def first(phase: str) -> float:
        return round(float(next(e["t"] for e in events
                                if e["status"].get("phase") == phase)) - t0, 2)

    running = next(e for e in events if e["status"].get("running"))
    assert not running["status"].get("degraded"), running["status"].get("errors")
    # cloud-final is the boot's last job: systemd counts the boot finished a
    # moment after cloud-init wrote result.json (Running's bar).
    guest = run_roost(home, "shell", name, "--", "sh", "-c",
                      "for i in $(seq 60); do systemd-analyze 2>/dev/null && exit; sleep 0.5; "
                      "done; systemd-analyze").strip().splitlines()[0]
    return {
        "seconds": seconds,
        "banner_s": first("waiting: a command runs over SSH"),
        "cloud_init_done_s": round(running["t"] - t0, 2),
        "guest_systemd_analyze": guest,
        "argv": qemu_argv(home, name),
        "base": json.loads((home / name / "image.json").read_text())["disk"],
        "cidata": home / name / "cidata.iso",
        "dir": str(home / name),
    }


def _cloud_init_seconds(port: int, home: Path, timeout: float) -> float:
    """From now until cloud-init's result.json exists, over one SSH login that
    waits in the guest (the least a script without roost could do)."""
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        proc = subprocess.run(
            ["ssh", "-p", str(port), "-i", str(home / "_config" / "user"),
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", f"{user}@127.0.0.1",
             "while [ ! -e /run/cloud-init/result.json ]; do sleep 0.2; done"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        if proc.returncode == 0:
            return float(time.monotonic() - start)
        time.sleep(0.5)  # sshd up, login not yet possible (user not made yet)
    raise RuntimeError(f"cloud-init not done within {timeout}s")


def _floor_boot(machine: dict[str, Any], scratch: Path, home: Path) -> tuple[float, float]:
    """The roost run's QEMU command line, on a fresh disk, without roost:
    seconds to the SSH banner, and to cloud-init finished."""
    floor = scratch / "floor"
    shutil.rmtree(floor, ignore_errors=True)
    floor.mkdir(parents=True)
    shutil.copy(machine["cidata"], floor / "cidata.iso")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", machine["base"],
                    "-F", "qcow2", str(floor / "disk.qcow2"), "4G"], check=True)
    port = free_port()
    argv = moved_argv(machine["argv"], machine["dir"], str(floor), port)
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        banner = banner_seconds(port, proc, start, 900, then_ssh=True)
        return banner, banner + _cloud_init_seconds(port, home, 900)
    finally:
        proc.kill()  # ours: started above
        proc.wait()


def boot_figures(runs: int = 2) -> dict[str, Any]:
    roost_runs: list[dict[str, Any]] = []
    floors: list[float] = []
    floors_done: list[float] = []
    scratch = Path(tempfile.mkdtemp(prefix="rbench-cb-", dir="/tmp"))
    try:
        with scratch_home() as home:
            run_roost(home, "image", "build", "debian-12")  # built before any clock runs
            for i in range(runs):
                run = _roost_boot(home, f"cb{i}")
                roost_runs.append(run)
                banner, done = _floor_boot(run, scratch, home)
                floors.append(banner)
                floors_done.append(done)
                run_roost(home, "delete", "--force", f"cb{i}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    starts = [r["seconds"] for r in roost_runs]
    accel = next((a for a in roost_runs[0]["argv"] if a.startswith(("tcg", "kvm"))), "?")
    return {
        "runs": runs, "accel": accel.split(",")[0],
        "roost_start_to_running_s": summary(starts, 2),
        "floor_qemu_to_banner_s": summary(floors, 2),
        "ratio_start_over_floor": round(statistics.median(starts) / statistics.median(floors),
                                        3),
        "ratio_goal": 1.15,
        # The same machine to the same bar as Running (cloud-init finished),
        # watched from one SSH login: what the image itself costs.
        "floor_qemu_to_cloud_init_done_s": summary(floors_done, 2),
        "ratio_start_over_cloud_init_floor": round(
            statistics.median(starts) / statistics.median(floors_done), 3),
        "roost_banner_s": summary([r["banner_s"] for r in roost_runs], 2),
        "cloud_init_done_s": summary([r["cloud_init_done_s"] for r in roost_runs], 2),
        "guest_systemd_analyze": [r["guest_systemd_analyze"] for r in roost_runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--boot-runs", type=int, default=2)
    parser.add_argument("--no-boot", action="store_true", help="the download figure only")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    out: dict[str, Any] = {"host": {"cpus": os.cpu_count(), "load": os.getloadavg()}}
    out["download"] = download_figures(args.runs, args.mib)
    if not args.no_boot:
        out["boot"] = boot_figures(args.boot_runs)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

