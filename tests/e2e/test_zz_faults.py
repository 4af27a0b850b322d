"""Faults, then delete: the last tests on the shared VM (files run in name order)."""

from __future__ import annotations

import json
import os
import signal
import time

from tests.e2e.conftest import Roost, pid_running, wait_until
from tests.e2e.test_lifecycle import start


def _events(roost: Roost, name: str) -> list[dict[str, object]]:
    lines = (roost.home / name / "ha.stdout.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_qemu_killed_host_agent_reports_and_exits(roost: Roost, vm: str) -> None:
    # Its own file (this may run without test_lifecycle.py), synced: the
    # disk keeps it through QEMU's death.
    roost.run("shell", vm, "--", "sh", "-c", "echo synced > ~/before-the-kill.txt && sync")
    ha_pid, qemu_pid = roost.pid(vm, "ha.pid"), roost.pid(vm, "qemu.pid")
    assert pid_running(ha_pid) and pid_running(qemu_pid) and qemu_pid is not None
    os.kill(qemu_pid, signal.SIGKILL)
    wait_until(lambda: not pid_running(ha_pid), 30, "the host agent to exit")
    last = _events(roost, vm)[-1]["status"]
    assert isinstance(last, dict)
    assert last["exiting"] is True and last["running"] is False
    assert any("QEMU" in e or "qemu" in e for e in last["errors"]), last
    assert roost.ls()[vm]["status"] in ("Stopped", "Broken")
    start(roost, vm)
    assert roost.run("shell", vm, "--", "cat", "before-the-kill.txt").stdout == "synced\n"


def test_host_agent_killed_is_broken_and_stop_cleans_up(roost: Roost, vm: str) -> None:
    ha_pid, qemu_pid = roost.pid(vm, "ha.pid"), roost.pid(vm, "qemu.pid")
    assert ha_pid is not None
    os.kill(ha_pid, signal.SIGKILL)
    wait_until(lambda: not pid_running(ha_pid), 10, "the host agent to die")
    assert roost.ls()[vm]["status"] == "Broken"
    assert pid_running(qemu_pid)
    roost.run("stop", vm)
    wait_until(lambda: not pid_running(qemu_pid), 5, "QEMU to be gone")
    assert roost.ls()[vm]["status"] == "Stopped"
    for leftover in ("qmp.sock", "ga.sock", "serial.sock", "ha.sock", "qemu.pid"):
        assert not (roost.home / vm / leftover).exists(), leftover


def test_delete(roost: Roost, vm: str) -> None:
    started = time.monotonic()
    roost.run("delete", vm)
    assert time.monotonic() - started < 5
    assert not (roost.home / vm).exists()
    assert vm not in roost.ls()
