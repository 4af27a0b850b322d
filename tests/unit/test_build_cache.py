"""Images roost builds: a build killed mid-way (kill -9, power loss) leaves
nothing that a later build or a reader takes for an image."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from roost.image.buildcache import MANIFEST, build_once, images_dir

KILLED_BUILDER = """import sys, time
from pathlib import Path
from roost.image.buildcache import build_once, images_dir

def build(tmp: Path) -> None:
    (tmp / "half.img").write_bytes(b"x" * 4096)
    print("building", flush=True)
    time.sleep(60)

build_once(images_dir() / "demo-1", build)
"""


def test_a_build_killed_mid_way_is_cleared_by_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOST_CACHE", str(tmp_path / "cache"))
    builder = subprocess.Popen([sys.executable, "-c", KILLED_BUILDER], text=True,
                               stdout=subprocess.PIPE, env=os.environ.copy())
    assert builder.stdout is not None and builder.stdout.readline() == "building\n"
    os.kill(builder.pid, signal.SIGKILL)
    builder.wait(10)
    left = [p.name for p in images_dir().iterdir() if p.name.startswith(".demo-1.")]
    assert len(left) == 1  # what kill -9 leaves: the finally never ran
    assert not (images_dir() / "demo-1").exists()

    def build(tmp: Path) -> None:
        (tmp / "disk.img").write_bytes(b"y")
        (tmp / MANIFEST).write_text("{}")

    started = time.monotonic()
    build_once(images_dir() / "demo-1", build)  # the lock died with the builder
    assert time.monotonic() - started < 5
    assert sorted(p.name for p in images_dir().iterdir()) == [".build.lock", "demo-1"]
    assert sorted(p.name for p in (images_dir() / "demo-1").iterdir()) == ["disk.img", MANIFEST]
