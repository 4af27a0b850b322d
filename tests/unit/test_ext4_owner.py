"""The root file system image owns every file to root, whoever builds it
(real mkfs.ext4 and debugfs)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from roost.errors import RoostError
from roost.image.ext4 import chown_to_root, not_root_owned, write_root_fs

BUILDER_UID = 1001  # stands for an ordinary user's build when the tests run as root


def inode(raw: Path, path: str) -> tuple[int, int, int]:
    """(uid, gid, permission bits) of `path` inside the image, as debugfs reads them."""
    out = subprocess.run(["debugfs", "-R", f"stat {path}", str(raw)], capture_output=True,
                         text=True, check=True).stdout
    user = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", out)
    mode = re.search(r"Mode:\s+(\d+)", out)
    assert user and mode, out
    return int(user.group(1)), int(user.group(2)), int(mode.group(1), 8)


def builder_tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    sudo = root / "usr" / "bin" / "sudo"
    sudo.write_bytes(b"\x7fELF")
    (root / "etc" / "sudoers").write_text("root ALL=(ALL:ALL) ALL\n")
    (root / "usr" / "bin" / "sudoedit").symlink_to("sudo")
    if os.geteuid() == 0:
        for path in root.rglob("*"):
            os.lchown(path, BUILDER_UID, BUILDER_UID)
    sudo.chmod(0o4755)  # after chown, which clears a set-uid bit
    (root / "etc" / "sudoers").chmod(0o440)
    return root


def test_files_an_ordinary_user_owns_are_root_in_the_image(tmp_path: Path) -> None:
    root = builder_tree(tmp_path)
    assert not_root_owned(root) == ["/etc", "/etc/sudoers", "/usr", "/usr/bin",
                                    "/usr/bin/sudo", "/usr/bin/sudoedit"]
    raw = tmp_path / "root.raw"
    write_root_fs(root, raw, 16 * 1024**2, "roost-test")
    assert inode(raw, "/usr/bin/sudo") == (0, 0, 0o4755)
    assert inode(raw, "/etc/sudoers") == (0, 0, 0o440)
    assert inode(raw, "/usr/bin/sudoedit")[:2] == (0, 0)
    assert inode(raw, "/usr/bin")[:2] == (0, 0)
    assert inode(raw, "/")[:2] == (0, 0)


def test_a_path_debugfs_cannot_find_fails_the_build(tmp_path: Path) -> None:
    root = builder_tree(tmp_path)
    raw = tmp_path / "root.raw"
    write_root_fs(root, raw, 16 * 1024**2, "roost-test")
    with pytest.raises(RoostError, match="/not-there: File not found"):
        chown_to_root(raw, ["/usr/bin/sudo", "/not-there"])


def test_a_name_debugfs_cannot_quote_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RoostError, match="cannot name"):
        chown_to_root(tmp_path / "unused.raw", ['/etc/a"b'])
