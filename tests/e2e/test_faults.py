"""Fault injection: kill -9 of each process roost runs, during start and
while running, and corrupted state files. For each fault: what `roost ls`
shows, the message or event that says why, no orphan process or stale
socket, recovery with `roost start` (or `resume`), and a file the guest had
synced is intact. Outcomes go to tests/.results/faults.json.

One small VM for the module. Only pids read from roost's own pid files (or
from `ssh -O check` on its control socket) are killed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from roost.image.cpio import NewcWriter
from tests.e2e.conftest import START_TIMEOUT, Roost, as_guest_root, pid_running, wait_until
from tests.e2e.hostdns import HOSTS_ADDRESS, HOSTS_NAME, guest_getent
from tests.e2e.test_portfwd import free_port, guest_background, guest_kill, port_open
from tests.unit.imageserver import serving, sha256

RESULTS = Path(__file__).resolve().parents[1] / ".results" / "faults.json"
NAME = "flt"
NUL = b"\0"
_results: dict[str, Any] = {}
_last_synced: list[str] = []  # what the guest last wrote and synced
# Run in the guest as root: SIGKILL the guest agent (found by the command
# line its service runs, in our own VM); prints the pids killed.
KILL_GUEST_AGENT = """import json, os, signal
mark, killed = b"roost-guestagent" + b".pyz", []  # not this command line
for p in filter(str.isdigit, os.listdir("/proc")):
    try:
        cmd = open("/proc/%s/cmdline" % p, "rb").read()
    except OSError:
        continue
    if mark in cmd and int(p) != os.getpid():
        os.kill(int(p), signal.SIGKILL)
        killed.append(int(p))
print(json.dumps(killed))
"""


def _save() -> None:
    faults = _results.setdefault("faults", {})
    _results["summary"] = {
        "injected": len(faults),
        "recovered": sum(1 for f in faults.values() if f["recovered"]),
        "residue": sum(len(f.get("residue", [])) for f in faults.values()),
        "notRecovered": sorted(k for k, f in faults.items() if not f["recovered"]),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(_results, indent=2, sort_keys=True, default=str) + "\n")


@contextmanager
def fault(name: str, what: str, expected: str) -> Iterator[dict[str, Any]]:
    """One injected fault: recovered when the block's assertions all hold."""
    detail: dict[str, Any] = {"what": what, "expected": expected}
    try:
        yield detail
    except BaseException as e:
        detail.update(recovered=False, failure=str(e)[:2000])
        _results.setdefault("faults", {})[name] = detail
        _save()
        raise
    detail["recovered"] = True
    _results.setdefault("faults", {})[name] = detail
    _save()


# -- the instance's processes and files ----------------------------------------

def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _children(pid: int) -> set[int]:
    """`pid` and all its descendants."""
    found, todo = {pid}, [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = Path(f"/proc/{p}/task/{t}/children").read_text().split()
            except OSError:
                continue
            for k in map(int, kids):
                if k not in found:
                    found.add(k)
                    todo.append(k)
    return found


def ssh_master_pid(roost: Roost) -> int | None:
    d = roost.home / NAME
    proc = subprocess.run(["ssh", "-F", str(d / "ssh.config"), "-O", "check", f"roost-{NAME}"],
                          capture_output=True, text=True, timeout=10)
    # "Master running (pid=1234)"
    if proc.returncode == 0 and "pid=" in proc.stderr:
        return int(proc.stderr.split("pid=")[1].split(")")[0])
    return None


def residue(roost: Roost) -> list[str]:
    """Processes that name the instance's directory but belong to nothing roost
    runs for it (the host agent and its children, QEMU, virtiofsd by pid file,
    the SSH master), and, when nothing runs, its sockets and pid files."""
    d = roost.home / NAME
    ha, qemu = roost.pid(NAME, "ha.pid"), roost.pid(NAME, "qemu.pid")
    ours: set[int] = set()
    if pid_running(ha) and ha is not None:
        ours |= _children(ha)
    if pid_running(qemu) and qemu is not None:
        ours.add(qemu)
    for pidfile in d.glob("*.pid"):
        pid = roost.pid(NAME, pidfile.name)
        if pid is not None and pid_running(pid):
            ours |= _children(pid)
    master = ssh_master_pid(roost) if (d / "ssh.sock").exists() else None
    if master is not None:
        ours.add(master)
    found = []
    me = {os.getpid(), *(_children(os.getpid()))}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid in ours or pid in me or not pid_running(pid):
            continue
        cmdline = _cmdline(pid)
        if str(d).encode() + b"/" in cmdline:
            found.append(f"process {pid}: {cmdline.replace(NUL, b' ')[:200]!r}")
    if not pid_running(ha) and not pid_running(qemu):
        found += [f"stale {p.name}" for p in d.iterdir()
                  if p.suffix == ".sock" or p.name in ("ha.pid", "qemu.pid")]
    return found


def events(roost: Roost) -> list[dict[str, Any]]:
    lines = (roost.home / NAME / "ha.stdout.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def status(roost: Roost) -> str:
    return str(roost.ls()[NAME]["status"])


def start(roost: Roost, *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return roost.run("start", NAME, "--timeout", str(START_TIMEOUT), *extra,
                     timeout=START_TIMEOUT + 30, check=check)


def ensure_running(roost: Roost) -> None:
    """Running, whatever an earlier fault left: each test stands alone."""
    if status(roost) == "Running":
        return
    if status(roost) != "Stopped":
        roost.run("stop", "--force", NAME, timeout=180, check=False)
    start(roost)


def write_synced(roost: Roost, text: str) -> None:
    ensure_running(roost)
    roost.run("shell", NAME, "--", "sh", "-c", f"echo {text} > synced.txt && sync")
    _last_synced[:] = [text]


def synced_intact(roost: Roost) -> bool:
    """The file the guest last synced reads back as written."""
    got = roost.run("shell", NAME, "--", "cat", "synced.txt").stdout.strip()
    return [got] == _last_synced


def wait_for_pid(roost: Roost, filename: str, timeout: float = 120) -> int:
    """The pid in FILENAME once it names a live process."""
    found: list[int] = []

    def there() -> bool:
        pid = roost.pid(NAME, filename)
        if pid is not None and pid_running(pid):
            found.append(pid)
            return True
        return False

    wait_until(there, timeout, f"{filename} to name a live process")
    return found[0]


def kill_pid_in(roost: Roost, filename: str) -> None:
    os.kill(wait_for_pid(roost, filename), signal.SIGKILL)


def start_while(roost: Roost, inject: Callable[[], None]) -> tuple[int, str]:
    """`roost start` with `inject()` run while it is under way: its exit
    status and standard error."""
    starting = roost.popen("start", NAME, "--timeout", str(START_TIMEOUT))
    try:
        inject()
        _, err = starting.communicate(timeout=START_TIMEOUT + 30)
    finally:
        if starting.poll() is None:
            starting.kill()
            starting.communicate()
    return starting.returncode, err


@pytest.fixture(scope="module")
def flt(roost: Roost, vm: str) -> Iterator[str]:
    roost.run("create", NAME, "--memory", "512MiB", "--disk", "4GiB",
              "--set", f"hostResolver.hosts={{{HOSTS_NAME}: {HOSTS_ADDRESS}}}")
    try:
        start(roost)
        yield NAME
    finally:
        roost.run("delete", "--force", NAME, timeout=120, check=False)


# -- while running ---------------------------------------------------------------

def test_qemu_killed_while_running(roost: Roost, flt: str) -> None:
    with fault("qemu-running", "kill -9 of QEMU while the VM runs",
               "the host agent reports it and exits; Stopped; start boots again") as d:
        write_synced(roost, "qemu-running")
        qemu, ha = roost.pid(NAME, "qemu.pid"), roost.pid(NAME, "ha.pid")
        assert qemu is not None
        os.kill(qemu, signal.SIGKILL)
        wait_until(lambda: not pid_running(ha), 30, "the host agent to exit")
        d["ls"] = status(roost)
        d["message"] = events(roost)[-1]["status"]["errors"]
        assert d["ls"] == "Stopped" and any("QEMU" in e for e in d["message"]), d
        d["residue"] = residue(roost)
        assert d["residue"] == []
        start(roost)
        assert synced_intact(roost)


def test_host_agent_killed_while_running(roost: Roost, flt: str) -> None:
    with fault("hostagent-running", "kill -9 of the host agent while the VM runs",
               "Broken; start takes the running VM over (same QEMU), nothing lost") as d:
        write_synced(roost, "ha-running")
        port = free_port()
        server = guest_background(roost, NAME, f"python3 -m http.server {port} --bind 127.0.0.1")
        wait_until(lambda: port_open(port), 30, "the guest's server to be forwarded")
        qemu, ha = roost.pid(NAME, "qemu.pid"), roost.pid(NAME, "ha.pid")
        assert ha is not None
        os.kill(ha, signal.SIGKILL)
        wait_until(lambda: not pid_running(ha), 10, "the host agent to die")
        d["ls"] = status(roost)
        assert d["ls"] == "Broken"
        # Its resolver's port taken meanwhile: the new host agent serves on
        # another and points the guest's DNS there.
        dns_port = json.loads((roost.home / NAME / "runtime.json").read_text())["dnsPort"]
        with contextlib.ExitStack() as held:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                sock = held.enter_context(socket.socket(socket.AF_INET, kind))
                sock.bind(("127.0.0.1", dns_port))
            out = start(roost)
            d["message"] = out.stderr.strip().splitlines()[:3]
            assert "reattaching" in out.stderr
            assert roost.pid(NAME, "qemu.pid") == qemu and pid_running(qemu)
            assert status(roost) == "Running"
            d["dnsMovedFrom"] = dns_port
            assert guest_getent(roost, NAME, HOSTS_NAME) == [HOSTS_ADDRESS]
        wait_until(lambda: port_open(port), 30, "the forward to be back after the takeover")
        d["forwardBack"] = True
        guest_kill(roost, NAME, server)
        d["residue"] = residue(roost)
        assert d["residue"] == []
        assert synced_intact(roost)


def test_guest_agent_killed_while_running(roost: Roost, flt: str) -> None:
    with fault("guestagent-running", "kill -9 of the guest agent in the guest",
               "it is restarted in the guest and the host agent reconnects") as d:
        write_synced(roost, "ga-running")
        d["killed"] = json.loads(roost.run("shell", NAME, "--", *as_guest_root(
            "python3", "-c", KILL_GUEST_AGENT)).stdout)
        assert d["killed"]

        def answers_again() -> bool:
            return roost.run("status", NAME, "--json", check=False).returncode == 0

        wait_until(answers_again, 60, "the guest agent to answer again")
        d["ls"] = status(roost)
        d["message"] = [e for e in events(roost) if "guestAgent" in json.dumps(e)][-1:]
        assert d["ls"] == "Running"
        d["residue"] = residue(roost)
        assert d["residue"] == []
        assert synced_intact(roost)


def test_ssh_master_killed_while_running(roost: Roost, flt: str) -> None:
    with fault("sshmaster-running", "kill -9 of the SSH control master",
               "the next command opens a new one; Running throughout") as d:
        write_synced(roost, "ssh-running")
        master = ssh_master_pid(roost)
        assert master is not None
        os.kill(master, signal.SIGKILL)
        wait_until(lambda: not pid_running(master), 10, "the master to die")
        d["ls"] = status(roost)
        assert d["ls"] == "Running"
        assert synced_intact(roost)  # a new master, on the same socket
        assert ssh_master_pid(roost) not in (None, master)
        d["residue"] = residue(roost)
        assert d["residue"] == []


# -- during start --------------------------------------------------------------------

def _stop(roost: Roost) -> None:
    ensure_running(roost)
    roost.run("stop", NAME, timeout=180)
    assert status(roost) == "Stopped"


def test_qemu_killed_during_start(roost: Roost, flt: str) -> None:
    _stop(roost)
    with fault("qemu-start", "kill -9 of QEMU while the guest boots",
               "start fails naming QEMU; Stopped, nothing left; start again boots") as d:
        code, err = start_while(roost, lambda: kill_pid_in(roost, "qemu.pid"))
        d["message"] = err.strip().splitlines()[-3:]
        assert code != 0 and "QEMU" in err, err
        wait_until(lambda: not pid_running(roost.pid(NAME, "ha.pid")), 30, "the agent to exit")
        d["ls"] = status(roost)
        assert d["ls"] == "Stopped"
        d["residue"] = residue(roost)
        assert d["residue"] == []
        start(roost)
        assert synced_intact(roost)


def test_host_agent_killed_during_start(roost: Roost, flt: str) -> None:
    _stop(roost)
    with fault("hostagent-start", "kill -9 of the host agent while the guest boots",
               "start fails saying so; Broken; start takes the VM over") as d:
        def kill_host_agent() -> None:
            wait_for_pid(roost, "qemu.pid")
            kill_pid_in(roost, "ha.pid")

        code, err = start_while(roost, kill_host_agent)
        d["message"] = err.strip().splitlines()[-3:]
        assert code != 0 and "host agent" in err, err
        d["ls"] = status(roost)
        assert d["ls"] == "Broken"
        start(roost)
        assert status(roost) == "Running"
        d["residue"] = residue(roost)
        assert d["residue"] == []
        assert synced_intact(roost)


def test_ssh_master_killed_during_start(roost: Roost, flt: str) -> None:
    _stop(roost)
    with fault("sshmaster-start", "kill -9 of the SSH control master as it comes up",
               "start still reaches Running (a new master)") as d:
        def kill_master() -> None:
            sock = roost.home / NAME / "ssh.sock"
            wait_until(sock.exists, START_TIMEOUT, "the SSH control socket")
            d["killed"] = master = ssh_master_pid(roost)
            if master is not None:
                os.kill(master, signal.SIGKILL)

        code, err = start_while(roost, kill_master)
        d["message"] = err.strip().splitlines()[-2:]
        assert code == 0, err
        d["ls"] = status(roost)
        assert d["ls"] == "Running"
        d["residue"] = residue(roost)
        assert d["residue"] == []
        assert synced_intact(roost)


# The guest agent killed as it comes up at boot (a boot step of roost.yaml,
# in our own VM): the [.] keeps pgrep from matching this script's own shell.
KILL_AGENT_AT_BOOT = {"mode": "boot", "script": (
    "nohup sh -c 'for i in $(seq 300); do p=$(pgrep -f \"roost-guestagent[.]pyz\"); "
    "if [ -n \"$p\" ]; then kill -9 $p; echo $p > /run/roost-e2e-killed; exit; fi; "
    "sleep 0.05; done' >/dev/null 2>&1 &\n")}


def test_guest_agent_killed_during_start(roost: Roost, flt: str) -> None:
    write_synced(roost, "ga-start")
    _stop(roost)
    config = roost.home / NAME / "roost.yaml"
    good = config.read_text()
    with fault("guestagent-start", "kill -9 of the guest agent as it starts at boot",
               "restarted in the guest; start still reaches Running") as d:
        try:
            doc = yaml.safe_load(good)
            doc["provision"] = [*(doc.get("provision") or []), KILL_AGENT_AT_BOOT]
            config.write_text(yaml.safe_dump(doc, sort_keys=False))
            out = start(roost)
            d["message"] = out.stderr.strip().splitlines()[-1:]
        finally:
            config.write_text(good)
        killed = roost.run("shell", NAME, "--", "cat", "/run/roost-e2e-killed").stdout.strip()
        d["killed"] = killed
        assert killed.isdigit(), "the boot step found no guest agent to kill"
        wait_until(lambda: roost.run("status", NAME, "--json", check=False).returncode == 0,
                   60, "the guest agent to answer")
        d["ls"] = status(roost)
        assert d["ls"] == "Running"
        d["residue"] = residue(roost)
        assert d["residue"] == []
        assert synced_intact(roost)


# A guest kernel hung early in boot, as under a TCG timer fault: an initramfs
# whose /init prints what Linux prints then (an RCU stall report) and stops.
HUNG_INIT = (b"#!/bin/busybox sh\n"
             b"echo 'rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:' >/dev/console\n"
             b"exec /bin/busybox sleep 100000\n")


def hung_initrd(good: Path, out: Path) -> None:
    """`good` with its /init replaced: the kernel unpacks a second cpio
    archive after the first, and a later entry wins."""
    with out.open("wb") as f:
        f.write(good.read_bytes())
        writer = NewcWriter(f)
        writer.add_file("init", HUNG_INIT, 0o755)
        writer.close()


def test_guest_kernel_hung_in_early_boot(roost: Roost, flt: str) -> None:
    write_synced(roost, "boot-hang")
    _stop(roost)
    pin = roost.home / NAME / "image.json"
    good = pin.read_text()
    with fault("boot-hang", "the guest kernel hangs early in boot (only an RCU stall "
               "report on its console, no sshd, no guest agent)",
               "one reset, then start fails naming the hang, long before the banner's "
               "300 s; nothing left; start again boots") as d:
        hung = roost.home / "hung-initrd"
        hung_initrd(Path(json.loads(good)["initrd"]), hung)
        roost.env["ROOST_BOOT_HANG_GRACE_SECS"] = "3"
        try:
            pin.write_text(json.dumps({**json.loads(good), "initrd": str(hung)}))
            began = time.monotonic()
            out = start(roost, check=False)
            d["seconds"] = round(time.monotonic() - began, 1)
        finally:
            pin.write_text(good)
            del roost.env["ROOST_BOOT_HANG_GRACE_SECS"]
        d["message"] = [line.strip() for line in out.stderr.splitlines() if "hung" in line]
        assert out.returncode != 0 and "hung early in boot" in out.stderr, out.stderr
        assert d["seconds"] < 120, d
        boots = (roost.home / NAME / "serial.log").read_bytes().count(b"detected stalls")
        d["bootsSeen"] = boots
        assert boots == 2, "one reset: the hung /init ran twice"
        reset = [e["status"]["rebooted"] for e in events(roost) if "rebooted" in e["status"]]
        assert reset and "hung early in boot" in reset[-1]["reason"], reset
        if status(roost) != "Stopped":
            roost.run("stop", "--force", NAME, timeout=180)
        d["ls"] = status(roost)
        d["residue"] = residue(roost)
        assert d["residue"] == []
        start(roost)
        assert synced_intact(roost)


# -- suspend ---------------------------------------------------------------------------

def test_host_agent_killed_during_suspend(roost: Roost, flt: str) -> None:
    with fault("hostagent-suspend", "kill -9 of the host agent while it saves the VM",
               "no half state taken for a suspend; start or resume recovers the VM") as d:
        write_synced(roost, "ha-suspend")
        ha = roost.pid(NAME, "ha.pid")
        assert ha is not None
        suspending = roost.popen("suspend", NAME)
        wait_until(lambda: any((roost.home / NAME).glob("vmstate*")), 120,
                   "the state file to be written")
        os.kill(ha, signal.SIGKILL)
        _, err = suspending.communicate(timeout=120)
        d["message"] = err.strip().splitlines()[-2:]
        assert suspending.returncode != 0
        d["ls"] = status(roost)
        assert d["ls"] in ("Broken", "Stopped"), d["ls"]
        out = start(roost)
        d["recoveredWith"] = out.stderr.strip().splitlines()[-1:]
        assert status(roost) == "Running"
        assert synced_intact(roost)
        d["residue"] = residue(roost)
        assert d["residue"] == []


# -- corrupted state files ---------------------------------------------------------------

def test_corrupted_runtime_file(roost: Roost, flt: str) -> None:
    with fault("corrupt-runtime", "runtime.json overwritten with garbage while running",
               "ls and stop still work; start boots again") as d:
        ensure_running(roost)
        (roost.home / NAME / "runtime.json").write_bytes(b"\x00{not json")
        ls = roost.run("ls", "--json", check=False)
        assert ls.returncode == 0 and "Traceback" not in ls.stderr, ls.stderr
        d["ls"] = status(roost)
        stop = roost.run("stop", NAME, timeout=180, check=False)
        d["message"] = (stop.stdout + stop.stderr).strip().splitlines()[-2:]
        assert stop.returncode == 0 and "Traceback" not in stop.stderr, stop.stderr
        assert status(roost) == "Stopped"
        d["residue"] = residue(roost)
        assert d["residue"] == []
        start(roost)
        assert synced_intact(roost)


def test_corrupted_config(roost: Roost, flt: str) -> None:
    _stop(roost)
    config = roost.home / NAME / "roost.yaml"
    good = config.read_bytes()
    with fault("corrupt-config", "roost.yaml overwritten with garbage",
               "start refuses naming the file (exit 2), ls still lists it") as d:
        try:
            config.write_bytes(b"cpus: [\n\xff\xfe")
            proc = start(roost, check=False)
            d["message"] = proc.stderr.strip().splitlines()[-2:]
            assert proc.returncode == 2 and "roost.yaml" in proc.stderr, proc.stderr
            assert "Traceback" not in proc.stderr
            ls = roost.run("ls", "--json", check=False)
            assert ls.returncode == 0 and "Traceback" not in ls.stderr
            d["ls"] = status(roost)
            d["residue"] = residue(roost)
            assert d["residue"] == []
        finally:
            config.write_bytes(good)
        start(roost)
        assert synced_intact(roost)


def test_corrupted_suspend_state(roost: Roost, flt: str) -> None:
    with fault("corrupt-suspended", "suspended.json overwritten with garbage while suspended",
               "resume refuses naming the file and the way out; stop --force; start") as d:
        write_synced(roost, "suspend-corrupt")
        roost.run("suspend", NAME, timeout=300)
        (roost.home / NAME / "suspended.json").write_text("{]")
        proc = roost.run("resume", NAME, timeout=120, check=False)
        d["message"] = proc.stderr.strip().splitlines()[-2:]
        assert proc.returncode != 0 and "suspended.json" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "stop --force" in proc.stderr
        d["ls"] = status(roost)
        roost.run("stop", "--force", NAME)
        assert status(roost) == "Stopped"
        d["residue"] = residue(roost)
        assert d["residue"] == []
        start(roost)
        assert synced_intact(roost)


# -- image downloads -----------------------------------------------------------------------

def test_image_pull_killed_mid_download(roost: Roost, tmp_path: Path) -> None:
    """`roost image pull` killed with -9 half-way through a slow mirror: the
    next pull resumes from what was kept (a Range request), verifies the
    digest over all of it, and the cache holds one complete image."""
    raw = b"\xeb\x63\x90" + os.urandom(4 * 1024**2 - 3)
    env = {**roost.env, "ROOST_CACHE": str(tmp_path / "cache")}
    with fault("download-killed", "kill -9 of `roost image pull` half-way through a download",
               "the next pull resumes, verifies the digest and caches one image") as d, \
            serving({"img.raw": raw}) as server:
        server.faults.chunk_delay = 0.02  # 64 KiB each 20 ms: about 1.3 s for the file
        argv = [sys.executable, "-m", "roost", "image", "pull", server.url("img.raw"),
                "--digest", sha256(raw)]
        pulling = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        wait_until(lambda: server.bytes_sent > len(raw) // 3, 60, "a third of the image")
        pulling.kill()
        pulling.wait(10)
        first = server.bytes_sent
        d["killedAfterBytes"] = first
        server.faults.chunk_delay = 0.0
        again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        d["message"] = again.stderr.strip().splitlines()[-2:]
        assert again.returncode == 0, again.stderr
        image = Path(again.stdout.strip().splitlines()[-1])
        assert image.read_bytes() == raw
        d["resumedWith"] = server.gets("img.raw")[-1].range
        assert d["resumedWith"] is not None and d["resumedWith"].startswith("bytes=")
        assert server.bytes_sent - first < len(raw)  # not fetched again from the start
        listing = json.loads(subprocess.run(
            [sys.executable, "-m", "roost", "image", "list", "--json"], env=env,
            capture_output=True, text=True, check=True).stdout)
        d["cacheEntries"] = len(listing)
        assert len(listing) == 1, listing
        d["residue"] = [str(p) for p in (tmp_path / "cache").rglob("*.partial*")]
        assert d["residue"] == []


# -- a full file system ---------------------------------------------------------------------

def _processes_naming(path: Path) -> list[str]:
    mark = str(path).encode() + b"/"
    return [f"{e}: {_cmdline(int(e))[:160]!r}" for e in os.listdir("/proc")
            if e.isdigit() and int(e) != os.getpid() and mark in _cmdline(int(e))]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs takes root (CI's root pass)")
def test_roost_home_on_a_full_file_system(roost: Roost, tmp_path: Path) -> None:
    """ROOST_HOME on a 64 MiB tmpfs, filled up under a running guest: a
    suspend cannot write the VM's state, and a new instance cannot be made.
    Each is refused saying so; the VM runs on; nothing is left half made."""
    fs = tmp_path / "small"
    fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(fs)],
                   check=True)
    env = {**roost.env, "ROOST_HOME": str(fs / "home")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "roost", *args], env=env, text=True,
                              capture_output=True, timeout=180, stdin=subprocess.DEVNULL)

    def fill(leave: int = 0) -> None:
        """The file system filled up to `leave` bytes free."""
        with open(fs / "filler", "ab", buffering=0) as f:  # unbuffered: no flush at close
            try:
                while os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize > leave + (1 << 20):
                    f.write(b"\0" * (1 << 20))
                if leave == 0:
                    while True:
                        f.write(b"\0" * 4096)
            except OSError:
                pass

    try:
        with fault("full-fs-suspend", "`roost suspend` with ROOST_HOME's file system full",
                   "refused naming the space; the VM runs on; no state file left") as d:
            made = run("create", "small", "--memory", "512MiB", "--disk", "4GiB")
            assert made.returncode == 0, made.stderr
            started = run("start", "small", "--timeout", str(START_TIMEOUT))
            assert started.returncode == 0, started.stderr
            # Room for the guest's own writes (a full disk would pause it: see
            # the next test), not for its RAM in use, which the saved state holds
            # (vmstate.ram).
            fill(leave=8 << 20)
            suspended = run("suspend", "small")
            d["message"] = suspended.stderr.strip().splitlines()[-2:]
            assert suspended.returncode != 0 and "Traceback" not in suspended.stderr
            assert "space" in suspended.stderr.lower(), suspended.stderr
            ls = run("ls", "--json")
            d["ls"] = json.loads(ls.stdout)[0]["status"]
            assert d["ls"] == "Running"
            d["residue"] = [p.name for p in (fs / "home" / "small").iterdir()
                            if p.name in ("vmstate.bin", "vmstate.ram", ".vmstate.ram.tmp",
                                          "suspended.json")]
            assert d["residue"] == []
            assert run("shell", "small", "--", "true").returncode == 0
        with fault("full-fs-create", "`roost create` on a file system with no room left",
                   "refused saying why; no half-made instance directory") as d:
            fill()
            made = run("create", "second")
            d["message"] = made.stderr.strip().splitlines()[-2:]
            assert made.returncode != 0 and "Traceback" not in made.stderr, made.stderr
            assert "space" in made.stderr.lower(), made.stderr
            assert not (fs / "home" / "second").exists()
            d["residue"] = [p.name for p in (fs / "home").iterdir()
                            if p.name.startswith(".") and "second" in p.name]
            assert d["residue"] == []
            assert run("ls").returncode == 0
    finally:
        run("delete", "--force", "small")
        # The SSH master ends a moment after the instance it served.
        wait_until(lambda: subprocess.run(["umount", str(fs)], capture_output=True).returncode
                   == 0, 30, f"{fs} to unmount")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs takes root (CI's root pass)")
def test_guest_disk_fills_the_host_file_system(tmp_path: Path) -> None:
    """A guest writing to its disk while ROOST_HOME's file system fills up:
    the VM pauses (the write held, no I/O error in the guest), an event and
    `ls` say why, and once there is room again the VM continues by itself
    and the guest's file is whole."""
    fs = tmp_path / "small"
    fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m,mode=0700", "tmpfs", str(fs)],
                   check=True)
    small = Roost(fs / "home")
    name, size = "full", 48 << 20
    expected = hashlib.sha256((b"roost\n" * (size // 6 + 1))[:size]).hexdigest()
    writer: subprocess.Popen[str] | None = None
    try:
        with fault("full-fs-guest-write", "the guest writes 48 MiB while ROOST_HOME's "
                   "file system has 4 MiB left", "the VM pauses with an event and Degraded, "
                   "continues once room is made; the file is whole") as d:
            small.run("create", name, "--memory", "256MiB", "--disk", "2GiB")
            small.run("start", name, "--timeout", str(START_TIMEOUT), timeout=START_TIMEOUT + 30)
            inst = fs / "home" / name
            st = os.statvfs(fs)
            filler = fs / "filler"
            with open(filler, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, st.f_bavail * st.f_frsize - (4 << 20))
            writer = small.popen(
                "shell", name, "--", "sh", "-c",
                f"yes roost | head -c {size} > big && sync && sha256sum big")
            log = inst / "ha.stdout.log"

            def statuses() -> list[dict[str, Any]]:
                found = []
                for line in log.read_text().splitlines():
                    with contextlib.suppress(ValueError):  # a line being written
                        found.append(json.loads(line)["status"])
                return found

            wait_until(lambda: any("diskFull" in s for s in statuses()), 120,
                       "a diskFull event")
            paused = next(s for s in statuses() if "diskFull" in s)
            d["event"] = paused["diskFull"]
            assert paused["degraded"] and paused["diskFull"]["path"] == str(inst / "disk.qcow2")
            d["message"] = [e for e in paused["errors"] if "paused" in e]
            assert d["message"] and "free space there" in d["message"][0]
            listed = small.ls()[name]
            d["ls"] = listed["status"]
            assert d["ls"] == "Degraded", listed
            assert writer.poll() is None  # held, not failed
            filler.unlink()
            out, err = writer.communicate(timeout=120)
            assert writer.returncode == 0, err
            d["guestSha256"] = out.split()[0]
            assert d["guestSha256"] == expected
            resumed = [s["diskContinued"] for s in statuses() if "diskContinued" in s]
            assert resumed, "no diskContinued event"
            d["continued"] = resumed[0]
            wait_until(lambda: small.ls()[name]["status"] == "Running", 30, "Running again")
            d["residue"] = []
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.communicate()
        small.run("delete", "--force", name, timeout=120, check=False)
        with contextlib.suppress(OSError):
            (fs / "filler").unlink()
        left = _processes_naming(fs)
        # The SSH master ends a moment after the instance it served.
        wait_until(lambda: subprocess.run(["umount", str(fs)], capture_output=True).returncode
                   == 0, 30, f"{fs} to unmount")
        assert left == []
