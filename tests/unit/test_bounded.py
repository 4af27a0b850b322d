"""What the host agent keeps stays bounded: status.errors, its logs (rotated,
and followed across the rotation by `roost start` and `roost logs -f`), and
the guest events nobody has read yet."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from roost.hostagent.events import MAX_ERROR_CHARS, MAX_ERRORS, EventEmitter
from roost.ops.start import EventFollower
from roost.store import logfile

# A host agent's stdout and stderr, as `roost start` spawns it: files, rotated
# at a small size. It writes N events (one a millisecond), a print and N
# log records, then exits.
WRITER = r"""
import logging, sys, time
from pathlib import Path
from roost.hostagent.events import EventEmitter
from roost.hostagent.main import _RotatingHandler
from roost.store.logfile import Rotation

out, err, n, size = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
events = EventEmitter(sys.stdout, Rotation.of(sys.stdout, out, size))
logging.basicConfig(level=logging.INFO, format="%(message)s",
                    handlers=[_RotatingHandler(Rotation.of(sys.stderr, err, size))])
for i in range(n):
    events.emit(phase=f"step {i}")
    logging.info("record %d", i)
    time.sleep(0.001)
print("a print goes to the current file")
"""


def spawn_writer(tmp_path: Path, n: int, size: int) -> subprocess.Popen[bytes]:
    out, err = tmp_path / "ha.stdout.log", tmp_path / "ha.stderr.log"
    for log in (out, err):
        logfile.start_afresh(log)  # as roost start does
    with open(out, "wb") as o, open(err, "wb") as e:
        return subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(err), str(n),
                                 str(size)], stdout=o, stderr=e)


def test_errors_keep_the_newest_and_count_the_rest() -> None:
    out = io.StringIO()
    events = EventEmitter(out)
    for i in range(MAX_ERRORS + 70):
        events.add_error(f"error {i}")
    events.add_error("x" * 100_000)
    status = events.emit(phase="p")["status"]
    assert len(status["errors"]) == MAX_ERRORS and status["errorsDropped"] == 71
    assert status["errors"][0] == "error 71" and status["errors"][-2] == f"error {MAX_ERRORS + 69}"
    assert len(status["errors"][-1]) == MAX_ERROR_CHARS
    assert status["errors"][-1].endswith("(cut short)")
    assert json.loads(out.getvalue().splitlines()[-1])["status"]["errorsDropped"] == 71


def test_no_rotation_unless_the_stream_is_that_file(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("")
    assert logfile.Rotation.of(io.StringIO(), log) is None
    with open(tmp_path / "other.log", "w") as other:
        assert logfile.Rotation.of(other, log) is None
    with open(log, "w") as same:
        assert logfile.Rotation.of(same, log) is not None


def test_the_logs_rotate_and_lose_nothing(tmp_path: Path) -> None:
    n, size = 1500, 8 * 1024
    proc = spawn_writer(tmp_path, n, size)
    assert proc.wait(60) == 0
    out, err = tmp_path / "ha.stdout.log", tmp_path / "ha.stderr.log"
    for log in (out, err):
        assert log.stat().st_size < size + 4096 and logfile.previous(log).exists()
        assert logfile.previous(log).stat().st_size < size + 4096
    # The newest lines are all there, in order, the older file first.
    events = [json.loads(line) for line in
              (logfile.previous(out).read_text() + out.read_text()).splitlines()
              if line.startswith("{")]
    phases = [int(e["status"]["phase"].split()[1]) for e in events]
    assert phases == list(range(phases[0], n)) and phases[0] > 0
    assert out.read_text().endswith("a print goes to the current file\n")
    records = (logfile.previous(err).read_text() + err.read_text()).splitlines()
    assert records[-1] == f"record {n - 1}"
    assert records == [f"record {i}" for i in range(n - len(records), n)]


@pytest.mark.timeout(60)  # a follower that lost its way would wait for ever
def test_roost_start_follows_the_events_across_rotations(tmp_path: Path) -> None:
    n = 1500
    proc = spawn_writer(tmp_path, n, 16 * 1024)
    follower = EventFollower(tmp_path / "ha.stdout.log")
    seen: list[int] = []
    rotations = 0
    inode = 0
    try:
        while proc.poll() is None or not seen or seen[-1] != n - 1:
            seen += [int(e["status"]["phase"].split()[1]) for e in follower.poll()]
            with_inode = os.stat(tmp_path / "ha.stdout.log").st_ino
            rotations += inode not in (0, with_inode)
            inode = with_inode
            time.sleep(0.005)
            assert len(seen) <= n
    finally:
        follower.close()
    assert seen == list(range(n)) and rotations >= 2


@pytest.mark.timeout(60)
def test_roost_logs_follows_across_rotations(tmp_path: Path) -> None:
    home = tmp_path / "home"
    inst_dir = home / "dev"
    inst_dir.mkdir(parents=True)
    (inst_dir / "roost.yaml").write_text("images: []\n")
    stderr_log = inst_dir / "ha.stderr.log"
    stderr_log.write_text("from before\n")
    logs = subprocess.Popen(
        [sys.executable, "-m", "roost", "logs", "dev", "--source", "hostagent", "-f", "-n", "5"],
        stdout=subprocess.PIPE, env={**os.environ, "ROOST_HOME": str(home)})
    try:
        assert logs.stdout is not None
        assert logs.stdout.readline() == b"from before\n"
        n = 1500
        proc = spawn_writer(inst_dir, n, 16 * 1024)  # a new run: a new ha.stderr.log
        assert proc.wait(60) == 0
        assert logfile.previous(stderr_log).exists()
        got = [logs.stdout.readline().decode().strip() for _ in range(n)]
    finally:
        logs.terminate()
        logs.wait(10)
    assert got == [f"record {i}" for i in range(n)]


def test_tail_reaches_into_the_older_file(tmp_path: Path) -> None:
    log = tmp_path / "ha.stderr.log"
    logfile.previous(log).write_bytes(b"a\nb\nc\n")
    log.write_bytes(b"d\n")
    assert logfile.tail(log, 3) == (b"b\nc\nd\n", 2)
    assert logfile.tail(log, 1) == (b"d\n", 2)
    assert logfile.tail(log, 0) == (b"", 2)
    logfile.start_afresh(log)
    assert logfile.tail(log, 3) == (b"", 0)


def test_a_follower_starts_over_when_the_file_is_truncated(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(b"old boot, a long line\n")
    follower = logfile.Follower(log, offset=log.stat().st_size)
    assert follower.read() == b""
    with open(log, "wb") as f:  # a new boot rewrites it in place
        f.write(b"new\n")
    assert follower.read() == b"new\n"
    follower.close()
