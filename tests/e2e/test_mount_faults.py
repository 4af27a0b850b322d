"""Mounts when a process dies under them (issue 11): kill -9 of the host
agent with a runtime mount, and of the virtiofsd serving one. Pids come
from roost's own pid files; each test leaves the instance running, clean."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Roost, pid_running, small_vm, virtiofsd_pids, wait_until
from tests.e2e.test_faults import fault
from tests.e2e.test_lifecycle import start

NAME = "mfaults"


@pytest.fixture(scope="module")
def inst(roost: Roost) -> Iterator[str]:
    """One small VM for this file (no static mounts: every virtiofsd is a runtime one's)."""
    with small_vm(roost, NAME) as name:
        yield name


def guest(roost: Roost, name: str, script: str, timeout: float = 120) -> str:
    return roost.run("shell", name, "--", "sh", "-c", script, timeout=timeout).stdout


def mounts(roost: Roost, name: str) -> dict[str, dict[str, Any]]:
    rows = json.loads(roost.run("mount", "list", name, "--json").stdout)
    return {row["mountPoint"]: row for row in rows}


def events(roost: Roost, name: str) -> list[dict[str, Any]]:
    lines = (roost.home / name / "ha.stdout.log").read_text().splitlines()
    return [json.loads(line)["status"] for line in lines if line.strip()]


def share_dir(roost: Roost, which: str) -> Path:
    path = roost.home / f"fault-share-{which}"
    path.mkdir(exist_ok=True)
    (path / "data.txt").write_text(f"share {which}\n")
    return path


def daemon_pidfiles(roost: Roost, name: str) -> dict[str, int]:
    """The runtime virtiofsd pid files roost keeps beside their sockets."""
    out = {}
    for f in (roost.home / name).glob("hot*.vfs.sock.pid"):
        pid = roost.pid(name, f.name)
        if pid is not None:
            out[f.name] = pid
    return out


def assert_nothing_left(roost: Roost, name: str) -> None:
    """No runtime mount's daemon, socket or pid file outlives its removal."""
    assert virtiofsd_pids(roost, name) == []
    left = sorted(p.name for p in (roost.home / name).glob("hot*.vfs.sock*"))
    assert left == [], left


def test_host_agent_killed_with_a_runtime_mount(roost: Roost, inst: str) -> None:
    with fault("mount-hostagent-killed",
               "kill -9 of the host agent with a runtime virtiofs mount",
               "start takes over; the mount is listed, readable and adopted with its "
               "virtiofsd; the next mount add works first time"):
        share = share_dir(roost, "a")
        roost.run("mount", "add", inst, str(share), "/mnt/fa", "--type", "virtiofs")
        assert guest(roost, inst, "cat /mnt/fa/data.txt") == "share a\n"
        before = mounts(roost, inst)["/mnt/fa"]
        daemons = virtiofsd_pids(roost, inst)
        assert len(daemons) == 1
        ha_pid = roost.pid(inst, "ha.pid")
        assert ha_pid is not None
        os.kill(ha_pid, signal.SIGKILL)
        wait_until(lambda: not pid_running(ha_pid), 10, "the host agent to die")
        assert roost.ls()[inst]["status"] == "Broken"
        start(roost, inst)  # a new host agent takes the running VM over

        assert mounts(roost, inst)["/mnt/fa"] == before
        assert virtiofsd_pids(roost, inst) == daemons  # adopted, not restarted
        (share / "later.txt").write_text("after the takeover\n")
        assert guest(roost, inst, "cat /mnt/fa/data.txt /mnt/fa/later.txt") == \
            "share a\nafter the takeover\n"
        # The next hot-mount works first time, on another slot and device.
        other = share_dir(roost, "b")
        roost.run("mount", "add", inst, str(other), "/mnt/fb", "--type", "virtiofs")
        listed = mounts(roost, inst)
        assert listed["/mnt/fb"]["slot"] != listed["/mnt/fa"]["slot"]
        assert guest(roost, inst, "cat /mnt/fb/data.txt") == "share b\n"
        assert roost.ls()[inst]["status"] == "Running"
        roost.run("mount", "remove", inst, "/mnt/fa")
        roost.run("mount", "remove", inst, "/mnt/fb")
        assert mounts(roost, inst) == {}
        assert " /mnt/fa " not in guest(roost, inst, "cat /proc/mounts")
        assert_nothing_left(roost, inst)
        assert [p for p in daemons if pid_running(p)] == []


def test_virtiofsd_killed_under_a_runtime_mount(roost: Roost, inst: str) -> None:
    with fault("virtiofsd-killed", "kill -9 of the virtiofsd serving a runtime mount",
               "a mountFailed event, Degraded, mount list says why; remove --force makes "
               "guest I/O fail, not hang"):
        share = share_dir(roost, "k")
        known = daemon_pidfiles(roost, inst)
        roost.run("mount", "add", inst, str(share), "/mnt/fk", "--type", "virtiofs")
        assert guest(roost, inst, "cat /mnt/fk/data.txt") == "share k\n"
        (pidfile, daemon), = {k: v for k, v in daemon_pidfiles(roost, inst).items()
                              if k not in known}.items()
        assert daemon in virtiofsd_pids(roost, inst)
        # A shell whose working directory is in the share looks a new name up
        # there only after the remove: that I/O must fail, not hang. (I/O in
        # flight when virtiofsd dies cannot be ended: see MountManager.)
        guest(roost, inst, "setsid sh -c 'cd /mnt/fk && while [ ! -e /tmp/go ]; do sleep 0.1; "
                           "done; cat fresh.txt > /tmp/held.out 2>&1; echo $? > /tmp/held.rc' "
                           "< /dev/null > /dev/null 2>&1 &")
        seen = len(events(roost, inst))
        os.kill(daemon, signal.SIGKILL)
        killed = time.monotonic()

        def reported() -> bool:
            return any("mountFailed" in e for e in events(roost, inst)[seen:])

        wait_until(reported, 5, "a mountFailed event")
        noticed = time.monotonic() - killed
        failed = next(e["mountFailed"] for e in events(roost, inst)[seen:] if "mountFailed" in e)
        assert failed["mountPoint"] == "/mnt/fk" and "was killed by signal 9" in failed["error"]
        row = mounts(roost, inst)["/mnt/fk"]
        assert row["state"] == "failed" and f"pid {daemon}" in row["error"], row
        listed = roost.ls()[inst]
        assert listed["status"] == "Degraded" and "mounts" in listed["degradedBy"], listed
        text = roost.run("mount", "list", inst).stdout
        assert "/mnt/fk" in text and "failed" in text
        (share / "fresh.txt").write_text("never looked up before\n")

        started = time.monotonic()
        roost.run("mount", "remove", inst, "/mnt/fk", "--force")
        removed_in = time.monotonic() - started
        out = guest(roost, inst, "touch /tmp/go; for i in $(seq 100); do [ -e /tmp/held.rc ] && "
                                 "break; sleep 0.1; done; cat /tmp/held.rc /tmp/held.out; "
                                 "timeout 10 cat /mnt/fk/data.txt; echo rc=$?", timeout=60)
        held_rc, *rest = out.splitlines()
        assert held_rc not in ("", "0") and rest[-1] not in ("rc=0", "rc=124", "rc=143"), out
        assert "/mnt/fk" not in mounts(roost, inst)
        assert " /mnt/fk " not in guest(roost, inst, "cat /proc/mounts")
        assert roost.ls()[inst]["status"] == "Running"
        assert not (roost.home / inst / pidfile).exists()
        assert_nothing_left(roost, inst)

        # The instance takes a new mount after.
        roost.run("mount", "add", inst, str(share), "/mnt/fk2", "--type", "virtiofs")
        assert guest(roost, inst, "cat /mnt/fk2/data.txt") == "share k\n"
        roost.run("mount", "remove", inst, "/mnt/fk2")
        assert_nothing_left(roost, inst)
        print(f"\nvirtiofsd kill noticed in {noticed:.2f}s; remove --force took {removed_in:.2f}s")


def _sftp_servers(roost: Roost, name: str) -> list[int]:
    """The sftp-server processes under the instance's host agent (its
    descendants: started by roost for this instance, found by ancestry)."""
    ha = roost.pid(name, "ha.pid")
    assert ha is not None
    found, todo = [], [ha]
    while todo:
        pid = todo.pop()
        for task in os.listdir(f"/proc/{pid}/task") if pid_running(pid) else []:
            try:
                kids = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for kid in map(int, kids):
                todo.append(kid)
                try:
                    argv0 = Path(f"/proc/{kid}/cmdline").read_bytes().split(b"\0")[0]
                except OSError:
                    continue
                if argv0.endswith(b"/sftp-server"):
                    found.append(kid)
    return found


def test_sftp_server_killed_under_a_reverse_sshfs_mount(roost: Roost, inst: str) -> None:
    with fault("sftp-server-killed", "kill -9 of the sftp-server serving a reverse-sshfs mount",
               "a mountFailed event, Degraded; remove --force; a new mount works"):
        share = share_dir(roost, "s")
        before = set(_sftp_servers(roost, inst))
        roost.run("mount", "add", inst, str(share), "/mnt/fs", "--type", "reverse-sshfs")
        assert guest(roost, inst, "cat /mnt/fs/data.txt") == "share s\n"
        (server,) = set(_sftp_servers(roost, inst)) - before
        seen = len(events(roost, inst))
        os.kill(server, signal.SIGKILL)

        def reported() -> bool:
            return any("mountFailed" in e for e in events(roost, inst)[seen:])

        wait_until(reported, 10, "a mountFailed event")
        failed = next(e["mountFailed"] for e in events(roost, inst)[seen:] if "mountFailed" in e)
        assert failed["mountPoint"] == "/mnt/fs", failed
        assert mounts(roost, inst)["/mnt/fs"]["state"] == "failed"
        listed = roost.ls()[inst]
        assert listed["status"] == "Degraded" and "mounts" in listed["degradedBy"], listed
        roost.run("mount", "remove", inst, "/mnt/fs", "--force", timeout=60)
        out = guest(roost, inst, "timeout 10 cat /mnt/fs/data.txt; echo rc=$?", timeout=60)
        assert out.splitlines()[-1] not in ("rc=0", "rc=124", "rc=143"), out
        assert "/mnt/fs" not in mounts(roost, inst)
        assert " /mnt/fs " not in guest(roost, inst, "cat /proc/mounts")
        assert roost.ls()[inst]["status"] == "Running"
        assert set(_sftp_servers(roost, inst)) == before
        # A new reverse-sshfs mount works after.
        roost.run("mount", "add", inst, str(share), "/mnt/fs2", "--type", "reverse-sshfs")
        assert guest(roost, inst, "cat /mnt/fs2/data.txt") == "share s\n"
        roost.run("mount", "remove", inst, "/mnt/fs2")
