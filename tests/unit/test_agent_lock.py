"""The host agent's lock and its liveness probe: the probe sees a holder in
another process and never takes the lock itself, so a starting agent is not
refused while someone runs `roost ls` (seen in CI with flock(2) probes)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from roost.store import agentlock

HOLDER = """import sys, time
from pathlib import Path
from roost.store import agentlock
lock = agentlock.take(Path(sys.argv[1]))
print("held" if lock else "refused", flush=True)
sys.stdin.read()
"""


def test_a_holder_in_another_process_is_seen_and_excludes_others(tmp_path: Path) -> None:
    path = tmp_path / "ha.lock"
    assert not agentlock.held(path)  # no file: nobody
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline() == "held\n"
        assert agentlock.held(path)
        assert agentlock.take(path) is None  # a second agent is refused
    finally:
        holder.stdin.close()
        holder.wait(10)
    assert not agentlock.held(path)  # the lock dies with its holder
    lock = agentlock.take(path)
    assert lock is not None
    lock.close()


PROBER = """import sys, time
from pathlib import Path
from roost.store import agentlock
path, probes = Path(sys.argv[1]), 0
print("probing", flush=True)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    agentlock.held(path)
    probes += 1
print(probes)
"""


def test_probes_never_keep_an_agent_from_its_lock(tmp_path: Path) -> None:
    """Two processes probe as fast as they can (`roost ls` in a loop) while
    the lock is taken and dropped; flock(2) probes refused about a quarter
    of such takes on this machine."""
    path = tmp_path / "ha.lock"
    path.touch()
    probers = [subprocess.Popen([sys.executable, "-c", PROBER, str(path), "3"], text=True,
                                stdout=subprocess.PIPE) for _ in range(2)]
    for p in probers:
        assert p.stdout is not None and p.stdout.readline() == "probing\n"
    takes = 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        lock = agentlock.take(path)
        assert lock is not None, f"refused after {takes} takes"
        lock.close()
        takes += 1
    probes = sum(int(p.communicate(timeout=30)[0]) for p in probers)
    assert takes > 100 and probes > 1000, (takes, probes)
