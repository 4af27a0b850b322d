"""`roost image prune` keeps the newest image and every image an instance
pins, wherever that instance's ROOST_HOME is, and removes the rest."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from roost.image.prune import prune, record_pin


def make_image(cache: Path, key: str, age: float) -> Path:
    d = cache / "roost" / "images" / f"builtin-{key}"
    d.mkdir(parents=True)
    for name in ("vmlinux", "initrd", "base.qcow2"):
        (d / name).write_bytes(b"x" * 1000)
    (d / "manifest.json").write_text("{}")
    past = time.time() - age
    os.utime(d / "manifest.json", (past, past))
    return d


def make_instance(home: Path, name: str, image: Path) -> Path:
    d = home / name
    d.mkdir(parents=True)
    (d / "roost.yaml").write_text("cpus: 1\n")
    (d / "image.json").write_text(json.dumps({"kind": "builtin", "disk": str(image / "base.qcow2"),
                                              "kernel": None, "initrd": None}))
    return d


def test_prune_keeps_pinned_and_newest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, home, other_home = tmp_path / "cache", tmp_path / "home", tmp_path / "other"
    monkeypatch.setenv("ROOST_CACHE", str(cache / "roost"))
    monkeypatch.setenv("ROOST_HOME", str(home))
    old, pinned_here, pinned_elsewhere, newest = (
        make_image(cache, k, age) for k, age in (("a", 400), ("b", 300), ("c", 200), ("d", 100)))
    make_instance(home, "dev", pinned_here)  # made before pins were recorded
    elsewhere = make_instance(other_home, "ci", pinned_elsewhere)
    record_pin(pinned_elsewhere, elsewhere)
    gone = make_instance(other_home, "gone", old)
    record_pin(old, gone)
    (gone / "image.json").unlink()  # that instance was deleted: its pin no longer counts

    assert [p.directory for p in prune(dry_run=True)] == [old]
    assert old.exists()
    removed = prune()
    assert [p.directory for p in removed] == [old] and removed[0].size >= 3000
    assert not old.exists()
    assert pinned_here.exists() and pinned_elsewhere.exists() and newest.exists()
    assert prune() == []


def test_prune_keeps_the_newest_debian_image_and_pinned_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, home = tmp_path / "cache", tmp_path / "home"
    monkeypatch.setenv("ROOST_CACHE", str(cache / "roost"))
    monkeypatch.setenv("ROOST_HOME", str(home))
    built = []
    for key, age in (("a", 300), ("b", 200), ("c", 100)):
        d = make_image(cache, key, age).rename(cache / "roost" / "images" / f"debian-12-{key}")
        built.append(d)
    old, pinned, newest = built
    make_instance(home, "deb", pinned)
    assert [p.directory for p in prune()] == [old]
    assert pinned.exists() and newest.exists() and not old.exists()
