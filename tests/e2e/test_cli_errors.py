"""Bad input through the CLI: clear errors, exit 2 for usage, nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Roost


@pytest.mark.parametrize("name", ["Bad_Name", "-lead", "a" * 64, "x/y", ""])
def test_bad_names_are_usage_errors(roost: Roost, name: str) -> None:
    proc = roost.run("create", name, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "invalid instance name" in proc.stderr or "Usage" in proc.stderr


def test_unknown_key_names_the_key_and_leaves_nothing(roost: Roost, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cpus: 1\nmemroy: 1GiB\n")
    proc = roost.run("start", "typo", "--config", str(cfg), check=False)
    assert proc.returncode == 2
    assert "memroy: unknown key" in proc.stderr
    assert not (roost.home / "typo").exists()
    assert [p.name for p in roost.home.iterdir() if p.name.startswith(".typo")] == []


def test_memory_lots_is_a_usage_error(roost: Roost) -> None:
    proc = roost.run("create", "lots", "--memory", "lots", check=False)
    assert proc.returncode == 2
    assert "memory: invalid size 'lots'" in proc.stderr
    assert not (roost.home / "lots").exists()


def test_commands_on_missing_instances(roost: Roost) -> None:
    for args in (["stop", "ghost"], ["shell", "ghost"], ["info", "ghost"], ["delete", "ghost"]):
        proc = roost.run(*args, check=False)
        assert proc.returncode != 0
        assert "ghost" in proc.stderr and "does not exist" in proc.stderr, proc.stderr


def test_create_twice_refuses(roost: Roost) -> None:
    roost.run("create", "twice")
    proc = roost.run("create", "twice", check=False)
    assert proc.returncode != 0 and "already exists" in proc.stderr
    roost.run("delete", "twice")
    assert not (roost.home / "twice").exists()
