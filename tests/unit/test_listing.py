"""`roost ls`: the fast path loads neither click nor YAML (what it shows of
roost.yaml is kept in ls.json), and stays right when roost.yaml changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Runs `roost ARGS` in-process, then prints which heavy modules it loaded.
PROBE = """import sys
sys.argv = ["roost", *sys.argv[1:]]
from roost.cli.entry import main
main()
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"click", "yaml", "pydantic", "rich"})
print("LOADED", " ".join(heavy))
"""


def roost(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "roost", *args],
                          env={**os.environ, "ROOST_HOME": str(home)},
                          capture_output=True, text=True, timeout=60, check=False)


def probe(home: Path, *args: str) -> tuple[str, list[str]]:
    out = subprocess.run([sys.executable, "-c", PROBE, *args],
                         env={**os.environ, "ROOST_HOME": str(home)},
                         capture_output=True, text=True, timeout=60, check=True).stdout
    listing, _, loaded = out.rpartition("LOADED")
    return listing, loaded.split()


def rows(home: Path) -> dict[str, dict[str, object]]:
    r = roost(home, "ls", "--json")
    assert r.returncode == 0, r.stderr
    return {row["name"]: row for row in json.loads(r.stdout)}


def test_ls_loads_neither_click_nor_yaml_once_its_cache_is_made(tmp_path: Path) -> None:
    home = tmp_path / "h"
    assert roost(home, "create", "a", "--memory", "1GiB").returncode == 0
    first, loaded = probe(home, "ls")
    assert "click" not in loaded and "pydantic" not in loaded
    assert "yaml" in loaded  # roost.yaml read once, to make ls.json
    again, loaded = probe(home, "ls")
    assert loaded == [] and again == first
    _, loaded = probe(home, "ls", "--json")
    assert loaded == []
    assert "1GiB" in again


def test_a_hand_edit_of_roost_yaml_is_seen(tmp_path: Path) -> None:
    home = tmp_path / "h"
    assert roost(home, "create", "a", "--memory", "1GiB").returncode == 0
    assert roost(home, "create", "b").returncode == 0
    assert rows(home)["a"]["memory"] == 1 << 30
    config = home / "a" / "roost.yaml"
    config.write_text(config.read_text().replace("memory: 1GiB", "memory: 3GiB"))
    assert rows(home)["a"]["memory"] == 3 << 30
    config.write_text("memory: [broken\n")
    listed = rows(home)
    assert listed["a"]["memory"] is None and listed["b"]["memory"] is not None


def test_other_spellings_go_to_click(tmp_path: Path) -> None:
    home = tmp_path / "h"
    assert "List instances" in roost(home, "ls", "--help").stdout
    bad = roost(home, "ls", "--bogus")
    assert bad.returncode == 2 and "--bogus" in bad.stderr
