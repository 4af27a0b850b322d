"""`roost start`'s go-ahead to the host agent it spawned before it had
validated roost.yaml: go on, or exit having touched nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from roost.hostagent.handoff import GoAhead

ROOT = Path(__file__).resolve().parents[2]

# A stand-in for the host agent's main(): waits, then writes where the
# host agent would (its logs) only when told to go on.
CHILD = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from roost.hostagent import handoff
print("before the go-ahead", flush=True)
assert handoff.awaits_go_ahead()
if not handoff.wait_for_go_ahead():
    sys.exit(0)
out, err = Path(sys.argv[1]) / "ha.stdout.log", Path(sys.argv[1]) / "ha.stderr.log"
handoff.take_logs(out, err)
print("event", flush=True)
print("log line", file=sys.stderr, flush=True)
"""


def _spawn(go: GoAhead, directory: Path) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen([sys.executable, "-c", CHILD, str(directory)],
                                stdout=go.early_output, stderr=subprocess.STDOUT,
                                env={**go.child_env(), "PATH": "/usr/bin:/bin"},
                                pass_fds=go.child_fds)
    finally:
        go.spawned()


def test_called_off_it_exits_and_writes_nothing(tmp_path: Path) -> None:
    go = GoAhead()
    proc = _spawn(go, tmp_path)
    go.withdraw()
    assert proc.wait(timeout=30) == 0
    assert list(tmp_path.iterdir()) == []
    assert go.early_tail().strip() == "before the go-ahead"
    go.close()


def test_a_start_that_dies_calls_it_off(tmp_path: Path) -> None:
    # `roost start` killed: its end of the pipe closes with it.
    go = GoAhead()
    proc = _spawn(go, tmp_path)
    go.close()
    assert proc.wait(timeout=30) == 0
    assert list(tmp_path.iterdir()) == []


def test_on_go_it_writes_to_its_own_logs(tmp_path: Path) -> None:
    go = GoAhead()
    proc = _spawn(go, tmp_path)
    go.give()
    assert proc.wait(timeout=30) == 0
    assert (tmp_path / "ha.stdout.log").read_text() == "event\n"
    assert (tmp_path / "ha.stderr.log").read_text() == "log line\n"
    assert "event" not in go.early_tail()
    go.close()


def test_go_to_one_that_exited_already_is_no_error(tmp_path: Path) -> None:
    go = GoAhead()
    proc = subprocess.Popen([sys.executable, "-c", "pass"], pass_fds=go.child_fds)
    go.spawned()
    proc.wait(timeout=30)
    go.give()  # its read end is gone: EPIPE, not an exception
    go.close()


@pytest.mark.parametrize("value", ["", "not-a-number"])
def test_without_a_usable_go_ahead_it_just_goes_on(value: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from roost.hostagent import handoff

    monkeypatch.setenv(handoff.GO_AHEAD_ENV, value)
    assert handoff.wait_for_go_ahead() is True


def test_with_its_standard_streams_closed_the_pipe_keeps_clear_of_them() -> None:
    # `roost start >&- 2>&-` (cron): os.pipe() would hand out fds 1 and 2,
    # which the host agent's stdout and stderr then replace.
    probe = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
             "import os\n"
             "from roost.hostagent.handoff import GoAhead\n"
             "os.close(1); os.close(2)\n"
             "go = GoAhead()\n"
             "assert min(go.child_fds) > 2, go.child_fds\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=30)
    assert result.returncode == 0
