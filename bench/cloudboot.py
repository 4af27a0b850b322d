#!/usr/bin/env python3
"""Cloud image benchmark. The download figure: roost's fetch (the real code
path: streaming, sha256 over the bytes, format detection, the cache entry)
against `curl -o` of the same file, both from one local HTTP server (a
subprocess serving with sendfile, so that the clients are what is
measured), interleaved A B A B; also the fetch without a digest (C), which
is the transfer without the sha256 that curl does not do.

    .venv/bin/python bench/cloudboot.py [--runs 3] [--mib 200]   # prints JSON
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

from common import summary

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    print(json.dumps({
        "host": {"cpus": os.cpu_count()},
        "download": download_figures(args.runs, args.mib),
    }, indent=2))


if __name__ == "__main__":
    main()

