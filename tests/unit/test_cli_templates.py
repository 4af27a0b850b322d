"""`roost create/start --template/--set` and `roost template`, through the real
CLI in a subprocess (creating an instance boots nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def roost(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ROOST_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "roost", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "h"


def test_create_from_a_template_with_set(home: Path) -> None:
    r = roost(home, "create", "deb", "--template", "debian-12", "--set", "cpus=3",
              "--set", "env.GREETING=hello", "--memory", "3GiB")
    assert r.returncode == 0, r.stderr
    data = yaml.safe_load((home / "deb" / "roost.yaml").read_text())
    assert "base" not in data
    assert (data["cpus"], data["memory"], data["disk"], data["image"]) == (
        3, "3GiB", "20GiB", "debian-12")
    assert data["mountTypesUnsupported"] == ["9p"] and data["env"] == {"GREETING": "hello"}
    assert data["firmware"] == {"legacyBIOS": True}  # written whole, defaults included


def test_a_bad_set_creates_nothing(home: Path) -> None:
    r = roost(home, "create", "deb", "--template", "debian-12", "--set", "cpus=lots")
    assert r.returncode == 2
    assert "cpus: expected a whole number, got 'lots'" in r.stderr
    r = roost(home, "create", "deb", "--set", "mounts[0].writable=true")
    assert r.returncode == 2
    assert "--set 'mounts[0].writable=true': mounts[0] is out of range" in r.stderr
    r = roost(home, "create", "deb", "--set", "cpus")
    assert r.returncode == 2 and "--set 'cpus': expected KEY=VALUE" in r.stderr
    # no instance, no half-built directory
    assert not home.exists() or [p.name for p in home.iterdir() if p.name != ".locks"] == []


def test_template_and_config_are_exclusive(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "roost.yaml"
    config.write_text("cpus: 1\n")
    for command in ("create", "start"):
        r = roost(home, command, "x", "--template", "default", "--config", str(config))
        assert r.returncode == 2 and "give --template or --config, not both" in r.stderr
    r = roost(home, "create", "x", "--template", "nope")
    assert r.returncode == 2 and "unknown template 'nope'; the templates are: default" in r.stderr
    assert not (home / "x").exists()


def test_config_file_with_a_relative_base(home: Path, tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "big.yaml").write_text("base: ubuntu-lts\ncpus: 4\nmemory: 4GiB\n")
    (tmp_path / "roost.yaml").write_text("base: shared/big.yaml\nmemory: 3GiB\n")
    r = roost(home, "create", "u", "--config", "roost.yaml", "--set", "disk=30GiB",
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = yaml.safe_load((home / "u" / "roost.yaml").read_text())
    assert (data["cpus"], data["memory"], data["disk"]) == (4, "3GiB", "30GiB")
    assert data["images"][0]["digest"].startswith("sha256:")


def test_start_refuses_creation_flags_for_an_existing_instance(home: Path) -> None:
    assert roost(home, "create", "a").returncode == 0
    before = (home / "a" / "roost.yaml").read_text()
    r = roost(home, "start", "a", "--set", "cpus=4")
    assert r.returncode == 2
    assert "instance 'a' already exists; --set applies only when creating" in r.stderr
    r = roost(home, "start", "a", "--template", "debian-12")
    assert r.returncode == 2 and "--template applies only when creating" in r.stderr
    assert (home / "a" / "roost.yaml").read_text() == before


def test_start_validates_its_template_and_sets_before_creating(home: Path) -> None:
    r = roost(home, "start", "n", "--template", "ubuntu", "--set", "firmware.legacyBIOS=maybe")
    assert r.returncode == 2
    assert "firmware.legacyBIOS: expected true or false, got 'maybe'" in r.stderr
    assert not (home / "n").exists()


def test_template_list_and_show(home: Path, tmp_path: Path) -> None:
    r = roost(home, "template", "list", "--json")
    assert r.returncode == 0, r.stderr
    listed = {t["name"]: t for t in json.loads(r.stdout)}
    assert listed["default"]["image"] == "builtin"
    assert listed["debian-12"]["image"] == "debian-12"
    assert listed["fedora-43"]["image"].endswith("Fedora-Cloud-Base-Generic-43-1.6.x86_64.qcow2")
    table = roost(home, "template", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "IMAGE", "DESCRIPTION"]
    assert table[1].startswith("default ")
    r = roost(home, "template", "show", "ubuntu-lts")
    assert r.returncode == 0, r.stderr
    shown = yaml.safe_load(r.stdout)
    assert "base" not in shown and len(shown["images"]) == 4
    (tmp_path / "mine.yaml").write_text("base: template://debian-12\ncpus: 1\n")
    shown = yaml.safe_load(roost(home, "template", "show", "./mine.yaml", cwd=tmp_path).stdout)
    assert shown["cpus"] == 1 and shown["image"] == "debian-12"
    r = roost(home, "template", "show", "debian-99")
    assert r.returncode == 2 and "unknown template 'debian-99'" in r.stderr
