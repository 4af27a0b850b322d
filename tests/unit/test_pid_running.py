"""pid_running: a process counts as running until its last thread is gone,
because its threads share the fds (and the locks on them) of the leader."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from roost.store import agentlock
from roost.store.instance import pid_running

# The leader takes ha.lock, starts a thread, then ends only itself (the exit
# syscall, not exit_group): it is a zombie while the thread still runs and
# still holds the lock. The thread ends the process when the file `go` exists.
_CHILD = r"""
import ctypes, os, sys, threading, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from roost.store import agentlock
lock = agentlock.take(Path(sys.argv[1]))
assert lock is not None
def thread():
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.01)
    os._exit(0)
threading.Thread(target=thread).start()
print("ready", flush=True)
ctypes.CDLL(None, use_errno=True).syscall(60)  # SYS_exit on x86_64: this thread only
"""


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(platform.machine() != "x86_64", reason="SYS_exit is 60 on x86_64 only")
def test_zombie_leader_with_a_live_thread_still_runs(tmp_path: Path) -> None:
    lock, go = tmp_path / "ha.lock", tmp_path / "go"
    root = str(Path(__file__).resolve().parents[2])
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(lock), str(go), root],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 10
        while _state(child.pid) != "Z":
            assert time.monotonic() < deadline, "the leader never ended"
            time.sleep(0.01)
        # The leader is a zombie, yet the process holds its lock: it runs.
        assert agentlock.held(lock)
        assert pid_running(child.pid)
        go.touch()
        deadline = time.monotonic() + 10
        while pid_running(child.pid):
            assert time.monotonic() < deadline, "the thread never ended the process"
            time.sleep(0.01)
        assert not agentlock.held(lock)
    finally:
        go.touch()
        child.wait(10)
    assert not pid_running(child.pid)
