"""Picking a few files out of a real .deb (built here with dpkg-deb)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from roost.errors import RoostError
from roost.image.debpick import extract_picked


def make_deb(tmp_path: Path) -> Path:
    tree = tmp_path / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: pick-me\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: roost tests <t@example.invalid>\nDescription: test package\n")
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "usr" / "lib" / "pick").mkdir(parents=True)
    tool = tree / "usr" / "bin" / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o4755)
    (tree / "usr" / "bin" / "other").write_text("#!/bin/sh\n")
    (tree / "usr" / "bin" / "alias").symlink_to("tool")
    (tree / "usr" / "bin" / "dangling").symlink_to("other")
    (tree / "usr" / "lib" / "pick" / "libx.so.0.0.0").write_bytes(b"\x7fELF")
    (tree / "usr" / "lib" / "pick" / "libx.so.0").symlink_to("libx.so.0.0.0")
    deb = tmp_path / "pick-me_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)],
                   check=True, capture_output=True)
    return deb


def test_only_the_picked_files_arrive_with_their_modes_and_links(tmp_path: Path) -> None:
    deb = make_deb(tmp_path)
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "tool").symlink_to("busybox")  # a package's file wins
    picked = extract_picked(deb, root, ["usr/bin/tool", "usr/bin/alias", "usr/lib/pick/libx*"])
    assert picked == ["usr/bin/alias", "usr/bin/tool", "usr/lib/pick/libx.so.0",
                      "usr/lib/pick/libx.so.0.0.0"]
    tool = root / "usr" / "bin" / "tool"
    assert not tool.is_symlink() and stat.S_IMODE(tool.stat().st_mode) == 0o4755
    assert os.readlink(root / "usr" / "bin" / "alias") == "tool"
    assert not (root / "usr" / "bin" / "other").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pick-me_1.0_all.deb", "pkg", "root"]


def test_a_pattern_that_matches_nothing_names_the_package_and_pattern(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(RoostError, match=r"pick-me_1.0_all.deb has no file matching 'usr/bin/go"):
        extract_picked(make_deb(tmp_path), root, ["usr/bin/tool", "usr/bin/gone"])
    assert list(root.iterdir()) == []


def test_a_link_to_a_file_not_picked_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(RoostError, match="usr/bin/dangling links to other, which was not picked"):
        extract_picked(make_deb(tmp_path), root, ["usr/bin/dangling"])
