"""Helpers shared by the benchmarks: run roost against a ROOST_HOME, summarize."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def roost(home: Path, *args: str, input: str | None = None) -> str:
    """Run the CLI with ROOST_HOME=home; its stdout, or RuntimeError."""
    proc = subprocess.run([sys.executable, "-m", "roost", *args], text=True, input=input,
                          capture_output=True, env={**os.environ, "ROOST_HOME": str(home)})
    if proc.returncode != 0:
        raise RuntimeError(f"roost {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def summary(values: list[float], digits: int = 3) -> dict[str, float]:
    return {"median": round(statistics.median(values), digits),
            "min": round(min(values), digits), "max": round(max(values), digits)}


@contextmanager
def scratch_home() -> Iterator[Path]:
    """A throwaway ROOST_HOME: on the way out every instance in it is deleted
    with --force (its VM stopped) and the directory removed."""
    home = Path(tempfile.mkdtemp(prefix="rbench-", dir="/tmp"))
    try:
        yield home
    finally:
        for config in home.glob("*/roost.yaml"):
            subprocess.run([sys.executable, "-m", "roost", "delete", "--force",
                            config.parent.name],
                           env={**os.environ, "ROOST_HOME": str(home)}, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def qemu_argv(home: Path, name: str) -> list[str]:
    """The QEMU command line the host agent last started `name` with."""
    import shlex

    lines = (home / name / "ha.stderr.log").read_text().splitlines()
    line = next(ln for ln in reversed(lines) if "starting /" in ln and "qemu-system" in ln)
    return shlex.split(line.split("starting ", 1)[1])


def banner_seconds(port: int, proc: subprocess.Popen[bytes], start: float,
                   timeout: float, *, then_ssh: bool = False) -> float:
    """From `start` (time.monotonic) to the first SSH identification line on
    127.0.0.1:port.

    Found by a probe that spares the guest nothing: a fresh connection every
    0.1 s, each kept up to 2 s, so that one made after the guest's NIC and
    sshd are up answers at once (slirp parks the earlier ones; roost's own
    probe is gentler and learns from the guest agent when sshd listens). The
    floor is then the machine's, not a probe's. But each parked connection
    reaches sshd later and holds one of its unauthenticated slots (dropbear
    allows 5 per address, all of slirp's come from one): a floor that logs in
    afterwards (`then_ssh`) uses roost's own probe instead.
    """
    import asyncio
    import contextlib
    import time

    from roost.hostagent.banner import BannerError, probe_banner, wait_for_banner

    if then_ssh:
        async def gentle() -> None:
            waiting = asyncio.ensure_future(wait_for_banner("127.0.0.1", port, timeout=timeout))
            while not waiting.done():
                if proc.poll() is not None:
                    waiting.cancel()
                    raise RuntimeError(f"the floor's QEMU exited with {proc.returncode}")
                await asyncio.wait([waiting], timeout=0.1)
            waiting.result()

        asyncio.run(gentle())
        return float(time.monotonic() - start)

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        tasks: set[asyncio.Task[object]] = set()
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the floor's QEMU exited with {proc.returncode}")
                if loop.time() > deadline:
                    raise RuntimeError(f"no SSH banner on port {port} within {timeout:g}s")
                pause = 0.1
                for task in [t for t in tasks if t.done()]:
                    tasks.discard(task)
                    error = task.exception()
                    if error is None:
                        return  # a banner
                    if not isinstance(error, BannerError) or not error.retryable:
                        raise error
                    if error.refused or error.answered:
                        pause = 0.02  # nothing parked: try again soon
                if len(tasks) < 20:
                    tasks.add(asyncio.ensure_future(probe_banner(
                        "127.0.0.1", port, read_timeout=2.0, connect_timeout=2.0)))
                await asyncio.wait(tasks, timeout=pause, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(probe())
    return float(time.monotonic() - start)


def moved_argv(argv: list[str], inst_dir: str, floor_dir: str, port: int) -> list[str]:
    """An instance's QEMU command line on the files in `floor_dir`, its SSH
    forwarded from 127.0.0.1:port."""
    argv = [_own_memfd(a.replace(inst_dir, floor_dir)) for a in argv]
    return [a.split("hostfwd=")[0] + f"hostfwd=tcp:127.0.0.1:{port}-:22"
            if "hostfwd=" in a else a for a in argv]


def _own_memfd(arg: str) -> str:
    """roost hands QEMU the guest RAM as its own memfd (a descriptor this
    process does not have); the same backing, a shared memfd, made by QEMU."""
    found = re.fullmatch(r"memory-backend-file,id=mem,size=(\d+M),share=on,"
                         r"mem-path=/proc/self/fd/\d+", arg)
    return f"memory-backend-memfd,id=mem,size={found[1]},share=on" if found else arg


def machine_floor(home: Path, name: str, scratch: Path, timeout: float = 600) -> float:
    """The machine floor: instance `name`'s own QEMU command line (devices,
    disk, RAM backing, sandbox) on a fresh copy-on-write disk over the same
    base and a copy of its cidata, started by this process without roost:
    seconds from exec to the SSH banner on its forwarded port."""
    import json
    import time

    inst = home / name
    floor = scratch / "floor"
    shutil.rmtree(floor, ignore_errors=True)
    floor.mkdir(parents=True)
    shutil.copy(inst / "cidata.iso", floor / "cidata.iso")
    base = json.loads((inst / "image.json").read_text())["disk"]
    size = json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", str(inst / "disk.qcow2")],
        capture_output=True, text=True, check=True).stdout)["virtual-size"]
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
                    str(floor / "disk.qcow2"), str(size)], check=True)
    port = free_port()
    argv = moved_argv(qemu_argv(home, name), str(inst), str(floor), port)
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        return banner_seconds(port, proc, start, timeout)
    finally:
        proc.kill()  # ours: started above
        proc.wait()


def host_facts() -> dict[str, object]:
    """What a figure depends on: CPUs, and how busy the machine was."""
    return {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()[0]}
