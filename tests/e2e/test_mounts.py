"""Host folders in the guest: static mounts from roost.yaml and runtime
hot-mounts, for virtiofs, 9p and reverse sshfs, with real QEMU, virtiofsd
and sftp-server."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    START_TIMEOUT,
    STATIC_RO_GUEST,
    STATIC_RW_GUEST,
    Roost,
    pid_running,
    small_vm,
    static_share,
    virtiofsd_pids,
)


def guest(roost: Roost, name: str, script: str, check: bool = True) -> str:
    proc = roost.run("shell", name, "--", "sh", "-c", script, check=check)
    return proc.stdout if check else proc.stdout + proc.stderr


def mounts(roost: Roost, name: str) -> dict[str, dict[str, Any]]:
    rows = json.loads(roost.run("mount", "list", name, "--json").stdout)
    return {row["mountPoint"]: row for row in rows}


def is_mount_point(roost: Roost, name: str, path: str) -> bool:
    return f" {path} " in guest(roost, name, "cat /proc/mounts")


@pytest.fixture
def share(tmp_path: Path) -> Path:
    d = tmp_path / "share"
    d.mkdir()
    (d / "from-host.txt").write_text("host data\n")
    return d


def test_static_virtiofs_mounts(roost: Roost, vm: str) -> None:
    listed = mounts(roost, vm)
    assert listed[STATIC_RW_GUEST]["type"] == "virtiofs"
    assert listed[STATIC_RW_GUEST]["ephemeral"] is False
    assert listed[STATIC_RO_GUEST]["writable"] is False
    assert guest(roost, vm, f"cat {STATIC_RO_GUEST}/hello.txt") == "static hello\n"
    out = guest(roost, vm, f"touch {STATIC_RO_GUEST}/nope", check=False)
    assert "Read-only file system" in out
    guest(roost, vm, f"echo from guest > {STATIC_RW_GUEST}/g.txt")
    assert (static_share(roost, "rw") / "g.txt").read_text() == "from guest\n"
    (static_share(roost, "rw") / "h.txt").write_text("from host\n")
    assert guest(roost, vm, f"cat {STATIC_RW_GUEST}/h.txt") == "from host\n"


@pytest.mark.parametrize("kind", ["virtiofs", "reverse-sshfs"])
def test_hot_mount_read_write_remove(roost: Roost, vm: str, share: Path, kind: str) -> None:
    point = f"/mnt/hot-{kind}"
    static_daemons = len(virtiofsd_pids(roost, vm))
    roost.run("mount", "add", vm, str(share), point, "--type", kind, "--writable")
    row = mounts(roost, vm)[point]
    assert row["type"] == kind and row["ephemeral"] is True and row["writable"] is True
    assert guest(roost, vm, f"cat {point}/from-host.txt") == "host data\n"
    guest(roost, vm, f"echo guest wrote > {point}/from-guest.txt")
    assert (share / "from-guest.txt").read_text() == "guest wrote\n"
    (share / "later.txt").write_text("after mount\n")
    assert guest(roost, vm, f"cat {point}/later.txt") == "after mount\n"
    roost.run("mount", "remove", vm, point)
    assert point not in mounts(roost, vm)
    assert not is_mount_point(roost, vm, point)
    assert len(virtiofsd_pids(roost, vm)) == static_daemons


@pytest.mark.parametrize("kind", ["virtiofs", "reverse-sshfs"])
def test_read_only_hot_mount_refuses_writes(roost: Roost, vm: str, share: Path,
                                            kind: str) -> None:
    point = f"/mnt/ro-{kind}"
    roost.run("mount", "add", vm, str(share), point, "--type", kind)
    assert guest(roost, vm, f"cat {point}/from-host.txt") == "host data\n"
    out = guest(roost, vm, f"echo x > {point}/new.txt", check=False)
    assert "Read-only" in out or "Permission denied" in out
    assert not (share / "new.txt").exists()
    roost.run("mount", "remove", vm, point)


def test_nine_hot_mounts_and_slot_reuse(roost: Roost, vm: str, share: Path) -> None:
    static_daemons = len(virtiofsd_pids(roost, vm))
    points = [f"/mnt/slot{i}" for i in range(9)]
    for point in points[:8]:
        roost.run("mount", "add", vm, str(share), point, "--type", "virtiofs")
    slots = {row["slot"] for row in mounts(roost, vm).values() if row["ephemeral"]}
    assert len(slots) == 8
    ninth = roost.run("mount", "add", vm, str(share), points[8], "--type", "virtiofs",
                      check=False)
    assert ninth.returncode == 2 and "hot-plug slots are in use" in ninth.stderr
    assert points[8] not in mounts(roost, vm)
    assert len(virtiofsd_pids(roost, vm)) == static_daemons + 8
    freed = mounts(roost, vm)[points[3]]["slot"]
    roost.run("mount", "remove", vm, points[3])
    roost.run("mount", "add", vm, str(share), points[8], "--type", "virtiofs")
    assert mounts(roost, vm)[points[8]]["slot"] == freed
    for point in [p for i, p in enumerate(points) if i != 3]:
        roost.run("mount", "remove", vm, point)
    assert len(virtiofsd_pids(roost, vm)) == static_daemons


def test_failed_guest_mount_rolls_back(roost: Roost, vm: str, share: Path) -> None:
    static_daemons = len(virtiofsd_pids(roost, vm))
    guest(roost, vm, "touch /tmp/a-file")
    before = mounts(roost, vm)
    proc = roost.run("mount", "add", vm, str(share), "/tmp/a-file", "--type", "virtiofs",
                     check=False)
    assert proc.returncode != 0 and "exists and is not a directory" in proc.stderr
    assert mounts(roost, vm) == before
    assert len(virtiofsd_pids(roost, vm)) == static_daemons
    # The slot was freed: the next hot-mount gets the first one again.
    roost.run("mount", "add", vm, str(share), "/mnt/after-failure", "--type", "virtiofs")
    assert mounts(roost, vm)["/mnt/after-failure"]["slot"] == "hp0"
    roost.run("mount", "remove", vm, "/mnt/after-failure")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/etc"], "system directory"),
        (["relative/path"], "must be absolute"),
        (["/mnt/x", "--type", "9p"], "no fsdev_add"),
        (["/mnt/static-ro"], "already mounted"),
    ],
)
def test_bad_mount_requests(roost: Roost, vm: str, share: Path, args: list[str],
                            message: str) -> None:
    proc = roost.run("mount", "add", vm, str(share), *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_mount_errors_for_missing_paths_and_stopped_instances(roost: Roost, vm: str,
                                                               tmp_path: Path) -> None:
    proc = roost.run("mount", "add", vm, str(tmp_path / "missing"), "/mnt/m", check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = roost.run("mount", "remove", vm, "/mnt/never", check=False)
    assert proc.returncode == 2 and "nothing is mounted" in proc.stderr
    roost.run("create", "idle-mount")
    proc = roost.run("mount", "list", "idle-mount", check=False)
    assert proc.returncode != 0 and "not running" in proc.stderr
    roost.run("delete", "idle-mount")


def test_stop_with_hot_mounts_active_is_clean(roost: Roost, vm: str, share: Path) -> None:
    roost.run("mount", "add", vm, str(share), "/mnt/left-mounted", "--type", "virtiofs")
    roost.run("mount", "add", vm, str(share), "/mnt/left-sshfs", "--type", "reverse-sshfs")
    daemons = virtiofsd_pids(roost, vm)
    assert daemons
    roost.run("stop", vm, timeout=120)
    assert [p for p in daemons if pid_running(p)] == []
    assert virtiofsd_pids(roost, vm) == []
    roost.run("start", vm, "--timeout", str(START_TIMEOUT), timeout=START_TIMEOUT + 30)
    # Runtime mounts are ephemeral: gone after a restart; static ones are back.
    listed = mounts(roost, vm)
    assert "/mnt/left-mounted" not in listed and STATIC_RW_GUEST in listed


@pytest.fixture(scope="module", params=["9p", "reverse-sshfs"])
def typed_vm(request: pytest.FixtureRequest, roost: Roost, vm: str) -> Iterator[tuple[str, Path]]:
    """A small second VM whose static mounts use another type."""
    kind = request.param
    name = f"mnt-{kind.split('-')[0]}"
    share = roost.home / f"typed-{name}"
    share.mkdir()
    (share / "from-host.txt").write_text("typed\n")
    config = roost.home / f"{name}.yaml"
    config.write_text(f"mountType: {kind}\nmounts:\n  - location: {share}\n"
                      f"    mountPoint: /mnt/shared\n    writable: true\n")
    with small_vm(roost, name, "--config", str(config)):
        yield name, share


def test_static_mount_of_other_types(roost: Roost, typed_vm: tuple[str, Path]) -> None:
    name, share = typed_vm
    row = mounts(roost, name)["/mnt/shared"]
    assert row["state"] == "mounted", row
    assert guest(roost, name, "cat /mnt/shared/from-host.txt") == "typed\n"
    guest(roost, name, "echo back > /mnt/shared/from-guest.txt")
    assert (share / "from-guest.txt").read_text() == "back\n"
    assert os.stat(share / "from-guest.txt").st_size == 5


def test_suspend_resume_with_static_mount_of_other_types(
        roost: Roost, typed_vm: tuple[str, Path]) -> None:
    name, share = typed_vm
    # A mounted 9p export blocks saving the VM state; an sshfs stream does not
    # survive it: both are unmounted for the save and mounted again after.
    out = roost.run("suspend", name, timeout=300).stdout
    assert "/mnt/shared come back on resume" in out
    roost.run("resume", name, timeout=300)
    assert mounts(roost, name)["/mnt/shared"]["state"] == "mounted"
    (share / "after.txt").write_text("after resume\n")
    assert guest(roost, name, "cat /mnt/shared/after.txt") == "after resume\n"
