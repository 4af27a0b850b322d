from __future__ import annotations

import io
import subprocess
from pathlib import Path

from roost.image.cpio import NewcWriter


def test_archive_lists_with_cpio(tmp_path: Path) -> None:
    buf = io.BytesIO()
    w = NewcWriter(buf)
    w.add_dir("dev")
    w.add_char_device("dev/console", 5, 1)
    w.add_file("init", b"#!/bin/sh\necho hi\n", 0o755)
    w.add_symlink("sh", "busybox")
    w.close()
    out = subprocess.run(["cpio", "-itv"], input=buf.getvalue(), capture_output=True, check=True)
    listing = out.stdout.decode()
    assert "crw-------" in listing and "dev/console" in listing
    assert "-rwxr-xr-x" in listing and "init" in listing
    assert "sh -> busybox" in listing
    assert len(buf.getvalue()) % 4 == 0
