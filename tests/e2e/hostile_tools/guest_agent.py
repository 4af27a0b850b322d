"""The real guest agent's processes, as guest root finds them.

    python3 -m hostile_tools.guest_agent kill
        SIGKILLs them (init respawns one); prints {"killed": [pids]}.
    python3 -m hostile_tools.guest_agent stop|cont
        SIGSTOPs (SIGCONTs) them; prints {"stop": [pids]} ({"cont": ...}).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys

# In the command line init's script runs (roost/image/guestfs/rootfs/usr/lib/roost/guestagent).
MARK = b"roost_guest.agent import main"


def agent_pids() -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if MARK in f.read():
                    out.append(int(entry))
        except OSError:
            continue
    return out


def signal_agents(sig: int) -> list[int]:
    done = []
    for pid in agent_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            done.append(pid)
    return done


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def main() -> None:
    signals = {"kill": ("killed", signal.SIGKILL), "stop": ("stop", signal.SIGSTOP),
               "cont": ("cont", signal.SIGCONT)}
    if len(sys.argv) != 2 or sys.argv[1] not in signals:
        raise SystemExit(__doc__)
    key, sig = signals[sys.argv[1]]
    print(json.dumps({key: signal_agents(sig)}))


if __name__ == "__main__":
    main()
