"""The overlay diff against a real overlayfs (mounted here, as root)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost_guest.diff import DiffError, diff


@pytest.fixture
def overlay(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    for d in (lower, upper, work, merged):
        d.mkdir()
    (lower / "keep.txt").write_text("same")
    (lower / "edit.txt").write_text("old")
    (lower / "gone.txt").write_text("bye!")
    (lower / "dir").mkdir()
    (lower / "dir" / "a.txt").write_text("aaa")
    (lower / "dir" / "b.txt").write_text("b")
    proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                           f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"cannot mount overlayfs here: {proc.stderr}")
    try:
        yield lower, upper, merged
    finally:
        subprocess.run(["umount", str(merged)], check=True)


def test_created_modified_deleted_and_replaced_directory(overlay: tuple[Path, Path, Path]
                                                         ) -> None:
    lower, upper, merged = overlay
    (merged / "new.txt").write_text("hello")
    (merged / "edit.txt").write_text("newer!")
    (merged / "gone.txt").unlink()
    shutil.rmtree(merged / "dir")
    (merged / "dir").mkdir()
    (merged / "dir" / "a.txt").write_text("again")
    (merged / "newdir").mkdir()
    (merged / "newdir" / "x").write_text("x")
    got = diff(str(lower), str(upper))
    assert got == [
        {"path": "/dir", "kind": "modified", "size": 0},
        {"path": "/dir/a.txt", "kind": "modified", "size": 5},
        {"path": "/dir/b.txt", "kind": "deleted", "size": 1},
        {"path": "/edit.txt", "kind": "modified", "size": 6},
        {"path": "/gone.txt", "kind": "deleted", "size": 4},
        {"path": "/new.txt", "kind": "created", "size": 5},
        {"path": "/newdir", "kind": "created", "size": 0},
        {"path": "/newdir/x", "kind": "created", "size": 1},
    ]


def test_aufs_style_whiteouts(tmp_path: Path) -> None:
    lower, upper = tmp_path / "l", tmp_path / "u"
    lower.mkdir()
    upper.mkdir()
    (lower / "old").write_text("12345")
    (upper / ".wh.old").write_text("")
    assert diff(str(lower), str(upper)) == [{"path": "/old", "kind": "deleted", "size": 5}]


def test_no_overlay_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DiffError, match="readOnlyRoot"):
        diff(str(tmp_path), str(tmp_path / "missing"))


def test_many_changes_are_sorted(tmp_path: Path) -> None:
    lower, upper = tmp_path / "l", tmp_path / "u"
    lower.mkdir()
    (upper / "d").mkdir(parents=True)
    for i in range(300):
        (upper / "d" / f"f{i:04d}").write_text("x")
    got = diff(str(lower), str(upper))
    assert [c["path"] for c in got] == sorted(c["path"] for c in got) and len(got) == 301
    assert os.path.exists(upper)
