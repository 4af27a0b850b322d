"""`roost disk` and the disk store: made whole or not at all, held by one
live instance at a time, refused (exit 2, nothing changed) while held."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from roost.cli.main import cli
from roost.errors import RoostError
from roost.store import agentlock
from roost.store.disks import Disk, disks_dir
from roost.store.instance import Instance


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ROOST_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def roost(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def instance(name: str) -> Instance:
    inst = Instance.at(name)
    inst.dir.mkdir(parents=True)
    inst.config.write_text("cpus: 1\n")
    return inst


@pytest.fixture
def live(home: Path) -> Iterator[Instance]:
    """An instance whose host agent is up (it holds ha.lock): Starting."""
    inst = instance("busy")
    lock = agentlock.take(inst.ha_lock)
    assert lock is not None
    yield inst
    lock.close()


def test_create_lists_and_deletes(home: Path) -> None:
    assert roost("disk", "create", "data", "--size", "64MiB").exit_code == 0
    assert roost("disk", "create", "rawdisk", "--size", "1GiB", "--format", "raw").exit_code == 0
    rows = json.loads(roost("disk", "ls", "--json").output)
    assert [(r["name"], r["size"], r["format"], r["inUseBy"]) for r in rows] == [
        ("data", 64 * 1024**2, "qcow2", None), ("rawdisk", 1024**3, "raw", None)]
    assert "data" in roost("disk", "ls").output
    assert roost("disk", "delete", "data", "rawdisk").exit_code == 0
    assert json.loads(roost("disk", "ls", "--json").output) == []
    assert [p.name for p in disks_dir().iterdir()] == []


@pytest.mark.parametrize(("args", "message"), [
    (("create", "Data", "--size", "1GiB"), "invalid disk name 'Data'"),
    (("create", "a" * 21, "--size", "1GiB"), "use 1-20 of a-z"),
    (("create", "d", "--size", "1.5K"), "give a whole number of MiB"),
    (("create", "d", "--size", "lots"), "--size: invalid size 'lots'"),
    (("create", "d", "--size", "1GiB", "--format", "vmdk"), "'vmdk' is not one of"),
    (("delete", "nope"), "no disk named 'nope'"),
    (("resize", "nope", "--size", "2GiB"), "no disk named 'nope'"),
])
def test_bad_input_changes_nothing(home: Path, args: tuple[str, ...], message: str) -> None:
    result = roost("disk", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not disks_dir().exists() or list(disks_dir().iterdir()) == []


def test_a_second_create_and_a_partial_delete_are_refused(home: Path) -> None:
    assert roost("disk", "create", "data", "--size", "64MiB").exit_code == 0
    again = roost("disk", "create", "data", "--size", "1GiB")
    assert again.exit_code == 2 and "exists already" in again.output
    partial = roost("disk", "delete", "data", "nope")
    assert partial.exit_code == 2 and "no disk named 'nope'" in partial.output
    assert Disk("data").exists(), "nothing is deleted unless all of them can be"


def test_resize_only_grows(home: Path) -> None:
    assert roost("disk", "create", "data", "--size", "64MiB").exit_code == 0
    shrink = roost("disk", "resize", "data", "--size", "32MiB")
    assert shrink.exit_code == 2 and "it can only grow" in shrink.output
    assert roost("disk", "resize", "data", "--size", "128MiB").exit_code == 0
    assert Disk("data").info()["size"] == 128 * 1024**2


def test_a_live_holder_keeps_its_disk(home: Path, live: Instance) -> None:
    assert roost("disk", "create", "data", "--size", "64MiB").exit_code == 0
    disk = Disk("data")
    disk.acquire(live.name)
    other = instance("other")
    with pytest.raises(RoostError, match="in use by instance 'busy' \\(Starting\\)"):
        disk.acquire(other.name)
    for args in (("delete", "data"), ("resize", "data", "--size", "1GiB")):
        result = roost("disk", *args)
        assert result.exit_code == 2 and "in use by instance 'busy'" in result.output
    assert json.loads(roost("disk", "ls", "--json").output)[0]["inUseBy"] == "busy"
    disk.release(other.name)  # not other's to release
    assert disk.in_use_by() == "busy"
    disk.release(live.name)
    assert disk.in_use_by() is None


def test_a_stopped_holder_is_taken_over(home: Path) -> None:
    """A holder that crashed (its mark left, nothing running) does not keep the disk."""
    assert roost("disk", "create", "data", "--size", "64MiB").exit_code == 0
    instance("crashed")
    disk = Disk("data")
    disk.acquire("crashed")
    disk.acquire(instance("next").name)
    assert disk.in_use_by() == "next"
    assert roost("disk", "unlock", "data").exit_code == 0
    assert disk.in_use_by() is None


def test_import_copies_an_image(home: Path, tmp_path: Path) -> None:
    """`roost disk import`: a copy of the image, in the disk's own format; the
    source stays; a name taken or a source missing changes nothing."""
    source = tmp_path / "seed.raw"
    source.write_bytes(b"\0" * 1024 * 1024 + b"data" + b"\0" * (1024 * 1024 - 4))
    result = roost("disk", "import", "seeded", str(source))
    assert result.exit_code == 0, result.output
    info = Disk("seeded").info()
    assert (info["format"], info["size"]) == ("qcow2", 2 * 1024**2)
    assert source.exists()
    again = roost("disk", "import", "seeded", str(source))
    assert again.exit_code == 2 and "exists already" in again.output
    missing = roost("disk", "import", "other", str(tmp_path / "nope.img"))
    assert missing.exit_code == 2 and "is not a file" in missing.output
    assert [d.name for d in disks_dir().iterdir()] == ["seeded"]


def test_a_raw_disk_stays_raw_whatever_the_guest_wrote(home: Path, tmp_path: Path) -> None:
    """Guest root writes a qcow2 header naming a host file as its backing file
    into a raw disk: roost never probes the format, so QEMU is not told to
    open that file, and `roost disk ls` still says raw."""
    import subprocess

    from roost.driver.base import DataDisk
    from roost.driver.qemu.cmdline import _data_disk_args

    assert roost("disk", "create", "scratch", "--size", "64MiB", "--format", "raw").exit_code == 0
    secret = tmp_path / "host-secret"
    secret.write_text("not the guest's\n")
    evil = tmp_path / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw",
                    str(evil), "64M"], check=True)
    disk = Disk("scratch")
    with disk.file.open("r+b") as f:  # what the guest's writes to /dev/vdX do
        f.write(evil.read_bytes())
    probed = subprocess.run(["qemu-img", "info", str(disk.file)], capture_output=True, text=True)
    assert "qcow2" in probed.stdout, "the attack is real: a probe would say qcow2"
    assert disk.format() == "raw" and disk.info()["format"] == "raw"
    [drive, *_] = [a for a in _data_disk_args((DataDisk("scratch", disk.file, disk.format()),))
                   if a.startswith("if=none")]
    assert "format=raw" in drive and str(secret) not in drive
