"""The guest agent's start-up stays import-light: under TCG every module it
loads before its first answer adds to each boot's wait for Running."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Needed only by requests that come later (exec, mounts, diff) or not at all.
# `json` and `re` (which json loads, compiling its patterns): the wire
# protocol encodes with the C accelerators instead (compactjson). `socket`
# and `enum` (its IntEnums of every constant): lightsocket is `_socket`.
DEFERRED = {"roost_guest.execute", "roost_guest.mounts", "roost_guest.diff",
            "signal", "subprocess", "typing", "asyncio", "json", "re", "socket", "enum",
            "selectors"}


def test_starting_the_agent_loads_none_of_the_deferred_modules() -> None:
    # -S -E as the guest runs it: no site, no environment.
    probe = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
             "from roost_guest.agent import main\n"
             "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-S", "-E", "-c", probe], capture_output=True,
                         text=True, check=True, timeout=60).stdout.split()
    assert "roost_guest.agent" in out
    assert sorted(DEFERRED & set(out)) == []



# A child of the agent reports which signals it ignores (SigIgn, a hex mask).
_CHILD_IGNORES = (
    "import subprocess, sys\n"
    f"sys.path.insert(0, {str(ROOT)!r})\n"
    "from roost_guest.agent import default_interrupt_signals\n"
    "if sys.argv[1] == 'reset':\n"
    "    default_interrupt_signals()\n"
    "status = subprocess.run(['cat', '/proc/self/status'], capture_output=True, text=True)\n"
    "print(next(l.split()[1] for l in status.stdout.splitlines() if l.startswith('SigIgn')))\n"
)


def _ignored_by_a_command(mode: str) -> set[int]:
    # Started as a shell starts a background command: SIGINT, SIGQUIT ignored.
    out = subprocess.run(
        ["sh", "-c", f'"$0" -c "$1" {mode} & wait', sys.executable, _CHILD_IGNORES],
        capture_output=True, text=True, check=True, timeout=60).stdout
    mask = int(out.strip(), 16)
    return {n for n in (signal.SIGINT, signal.SIGQUIT) if mask & (1 << (n - 1))}


def test_commands_of_an_agent_started_in_the_background_take_interrupts() -> None:
    assert _ignored_by_a_command("keep") == {signal.SIGINT, signal.SIGQUIT}
    assert _ignored_by_a_command("reset") == set()
