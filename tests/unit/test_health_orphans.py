"""A guest agent killed by SIGKILL leaves the check it had in flight
running (nothing is left to kill it at its timeout); the respawned agent
ends such commands, and only those: marked ones it did not start itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from roost_guest import health

# A stand-in for the killed agent: runs a check command as run_command does,
# says the command's pid, and waits to be killed.
PREDECESSOR = """
import subprocess, sys
sys.path.insert(0, %r)
from roost_guest import health
import threading
threading.Thread(target=health.run_command, args=(["sleep", "60"], 600), daemon=True).start()
import time
while True:
    time.sleep(1)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _children_sleep(parent: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if int(fields[1]) == parent and cmdline == b"sleep\x0060\x00":
                return int(entry)
        time.sleep(0.05)
    raise AssertionError("the predecessor's check did not start")


def test_a_killed_agents_check_is_ended_and_no_other() -> None:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    predecessor = subprocess.Popen([sys.executable, "-c", PREDECESSOR % root])
    ours = subprocess.Popen(["sleep", "60"], start_new_session=True,
                            env={**os.environ, health.COMMAND_MARK: "1"})
    unmarked = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        orphan = _children_sleep(predecessor.pid)
        predecessor.kill()
        predecessor.wait()
        assert _alive(orphan), "the check died with its agent: nothing to test"
        killed = health.end_orphans()
        assert orphan in killed, json.dumps(killed)
        deadline = time.monotonic() + 5
        while _alive(orphan):
            assert time.monotonic() < deadline, "the orphaned check was not killed"
            time.sleep(0.05)
        assert ours.pid not in killed and ours.poll() is None  # our own child: not an orphan
        assert unmarked.pid not in killed and unmarked.poll() is None  # not a check
    finally:
        for proc in (ours, unmarked):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if predecessor.poll() is None:
            predecessor.kill()
            predecessor.wait()
