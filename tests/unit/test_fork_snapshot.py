"""`roost fork --snapshot` of a stopped instance and a snapshot of its disk
alone: the fork's disk is the source's as it was at the snapshot, without
snapshots, the source's untouched; and a snapshot that does not exist is a
usage error that leaves nothing behind. (A snapshot with VM state, of a
running instance, is in tests/e2e/test_sdk.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from roost.errors import WrongState
from roost.ops.fork import _snapshot_machine, forked_state
from roost.store.instance import Instance


def roost(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "roost", *args],
                          env={**os.environ, "ROOST_HOME": str(home)},
                          capture_output=True, text=True, timeout=60, check=False)


def io(disk: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(disk)],
                          capture_output=True, text=True, check=False)


def snapshots_of(disk: Path) -> list[str]:
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(disk)],
                                     capture_output=True, text=True, check=True).stdout)
    return [s["name"] for s in info.get("snapshots") or []]


def test_a_fork_of_a_disk_snapshot_has_the_disk_as_it_was(tmp_path: Path) -> None:
    assert roost(tmp_path, "create", "src", "--cpus", "1").returncode == 0
    disk = tmp_path / "src" / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    assert io(disk, "write -P 0xaa 0 64k").returncode == 0
    assert roost(tmp_path, "snapshot", "create", "src", "--tag", "then").returncode == 0
    assert roost(tmp_path, "snapshot", "create", "src", "--tag", "other").returncode == 0
    assert io(disk, "write -P 0xbb 0 64k").returncode == 0
    proc = roost(tmp_path, "fork", "src", "kid", "--snapshot", "then")
    assert proc.returncode == 0, proc.stderr
    kid = tmp_path / "kid" / "disk.qcow2"
    assert io(kid, "read -P 0xaa 0 64k").returncode == 0  # 1: another pattern
    assert snapshots_of(kid) == []
    assert sorted(p.name for p in kid.parent.iterdir()) == ["disk.qcow2", "roost.yaml"]
    assert io(disk, "read -P 0xbb 0 64k").returncode == 0
    assert snapshots_of(disk) == ["then", "other"]
    listed = {i["name"]: i["status"] for i in json.loads(roost(tmp_path, "ls", "--json").stdout)}
    assert listed == {"src": "Stopped", "kid": "Stopped"}  # a disk alone: it boots


@pytest.mark.parametrize(("tag", "says"), [("nope", "has no snapshot 'nope'"),
                                           ("bad tag", "invalid snapshot tag")])
def test_a_snapshot_that_is_not_there_is_a_usage_error(tmp_path: Path, tag: str,
                                                       says: str) -> None:
    assert roost(tmp_path, "create", "src", "--cpus", "1").returncode == 0
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2",
                    str(tmp_path / "src" / "disk.qcow2"), "64M"], check=True)
    proc = roost(tmp_path, "fork", "src", "kid", "--snapshot", tag)
    assert proc.returncode == 2 and says in proc.stderr, proc
    assert not (tmp_path / "kid").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["src"]


def test_the_machine_recorded_at_a_snapshot_moves_from_where_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The source was renamed since its snapshot: the recorded machine still
    names its old directory, and nothing of it is left in the fork's."""
    monkeypatch.setenv("ROOST_HOME", str(tmp_path))
    src, kid = Instance.at("renamed"), Instance.at("kid")
    then = str(tmp_path / "before")
    machine: dict[str, Any] = {"qemu": {"name": "before", "ssh_port": 5, "loadvm": "s1",
                                        "disk": f"{then}/disk.qcow2",
                                        "qmp_sock": f"{then}/qmp.sock"}, "dnsPort": 9}
    state = forked_state(machine, src, kid, also_moved=then)
    assert state["qemu"]["disk"] == f"{kid.dir}/disk.qcow2"
    assert state["qemu"]["qmp_sock"] == f"{kid.dir}/qmp.sock"
    assert state["qemu"]["loadvm"] == "s1" and state["qemu"]["name"] == "kid"
    assert state["forkedFrom"] == "renamed" and state["dnsPort"] == 9


def test_a_snapshot_of_an_older_roost_yaml_is_not_forked_with_its_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its machine (network, shares) is roost.yaml's at the snapshot: once
    roost.yaml changed, a fork of its memory is refused, and said why."""
    monkeypatch.setenv("ROOST_HOME", str(tmp_path))
    assert roost(tmp_path, "create", "src", "--cpus", "1").returncode == 0
    src = Instance.at("src")
    record = src.snapshot_machine("s1")
    record.parent.mkdir()
    machine = {"dir": str(src.dir), "dnsPort": 9, "qemu": {"name": "src"}}
    record.write_text(json.dumps({**machine, "configDigest": src.config_digest()}))
    assert _snapshot_machine(src, "s1") == machine
    src.config.write_text(src.config.read_text() + "# edited: network.internet: false\n")
    with pytest.raises(WrongState, match=r"roost\.yaml of 'src' has changed since snapshot 's1'"):
        _snapshot_machine(src, "s1")
    record.write_text(json.dumps(machine))  # an older roost's record: no digest
    with pytest.raises(WrongState, match="take a new snapshot"):
        _snapshot_machine(src, "s1")
