"""State files count only once they are on disk; no disk is ever overwritten;
ROOST_HOME and instance directories are private from their first moment.

fsync is observed, not replaced: os.fsync is wrapped to note which real
file or directory each call synced and what it held at that moment.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from roost.config.loader import parse_config
from roost.driver.qemu.cmdline import BootSpec, QemuSpec
from roost.driver.qemu.driver import QemuDriver
from roost.driver.qemu.sandbox import OPT_OUT_ENV
from roost.errors import RoostError
from roost.image.disk import PIN_FILE, _create_disk, prepare_disk
from roost.store.durable import write_atomic
from roost.store.instance import Instance, create_instance_dir


@dataclass(frozen=True)
class Synced:
    path: Path
    is_dir: bool
    # What it held when synced: a file's bytes, a directory's sorted names.
    content: bytes | tuple[str, ...]


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[Synced]:
    seen: list[Synced] = []
    real = os.fsync

    def observed(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            seen.append(Synced(path, True, tuple(sorted(os.listdir(path)))))
        else:
            seen.append(Synced(path, False, path.read_bytes() if path.stat().st_size < 1 << 20
                               else b"<large>"))
        real(fd)

    monkeypatch.setattr(os, "fsync", observed)
    return seen


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


# -- write_atomic -------------------------------------------------------------------


def test_write_atomic_syncs_the_new_file_before_the_rename_and_the_directory_after(
        tmp_path: Path, fsyncs: list[Synced]) -> None:
    target = tmp_path / "runtime.json"
    target.write_text("old\n")
    write_atomic(target, "new\n", 0o600)

    assert target.read_text() == "new\n" and stat.S_IMODE(target.stat().st_mode) == 0o600
    file_sync, dir_sync = fsyncs
    # The temporary file, complete, while runtime.json still held the old text...
    assert not file_sync.is_dir and file_sync.path.parent == tmp_path
    assert file_sync.path.name.startswith(".runtime.json.") and file_sync.content == b"new\n"
    # ...then the directory, once the rename had happened (no temporary left).
    assert dir_sync == Synced(tmp_path, True, ("runtime.json",))


def test_a_failed_write_atomic_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "suspended.json"
    target.write_text("old\n")
    with pytest.raises(TypeError):
        write_atomic(target, 42)  # type: ignore[arg-type]
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["suspended.json"]


def test_a_new_instance_directory_is_on_disk_and_private(
        tmp_path: Path, fsyncs: list[Synced]) -> None:
    home = tmp_path / "fresh" / "home"
    inst = Instance.at("dev", home)
    create_instance_dir(inst, {"roost.yaml": "cpus: 1\n"})

    assert (inst.dir / "roost.yaml").read_text() == "cpus: 1\n"
    for d in (tmp_path / "fresh", home, inst.dir):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert any(s.path.name.startswith(".roost.yaml.") and s.content == b"cpus: 1\n"
               for s in fsyncs if not s.is_dir)
    # Last: ROOST_HOME itself, with the instance directory renamed into it.
    assert fsyncs[-1] == Synced(home, True, ("dev",))


# -- ROOST_HOME through the CLI -----------------------------------------------------


def roost(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "roost", *args],
                          env={**os.environ, "ROOST_HOME": str(home)},
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_fresh_roost_home_is_made_0700(tmp_path: Path) -> None:
    home = tmp_path / "h"
    r = roost(home, "ls")
    assert r.returncode == 0, r.stderr
    assert not home.exists()  # listing makes nothing
    old = os.umask(0o022)  # what a user's shell has
    try:
        r = roost(home, "create", "dev")
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    for d in (home, home / "dev", home / ".locks"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert roost(home, "ls").returncode == 0
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


# -- prepare_disk never overwrites a disk -------------------------------------------


@pytest.fixture
def base_image(tmp_path: Path) -> Path:
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "64M")
    return base


def instance_with_data_disk(tmp_path: Path, base: Path) -> Instance:
    inst = Instance.at("dev", tmp_path / "home")
    create_instance_dir(inst, {"roost.yaml": f"image: {base}\n"})
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(inst.disk))
    # The guest's data, written into the disk by qemu-io as a guest would.
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 1M", str(inst.disk)],
                   check=True, capture_output=True)
    return inst


def test_prepare_disk_refuses_a_disk_without_its_image_pin(
        tmp_path: Path, base_image: Path) -> None:
    inst = instance_with_data_disk(tmp_path, base_image)
    before, inode = sha256(inst.disk), inst.disk.stat().st_ino
    config = parse_config({"image": str(base_image)})

    with pytest.raises(RoostError) as e:
        prepare_disk(inst, config)

    message = str(e.value)
    assert str(inst.disk) in message and PIN_FILE in message
    assert "Move the disk away" in message and "roost delete dev" in message
    assert sha256(inst.disk) == before and inst.disk.stat().st_ino == inode
    assert not inst.path(PIN_FILE).exists()
    assert not inst.path("disk.qcow2.tmp").exists()


def test_a_disk_made_meanwhile_is_not_replaced(tmp_path: Path, base_image: Path) -> None:
    inst = instance_with_data_disk(tmp_path, base_image)
    before = sha256(inst.disk)
    with pytest.raises(RoostError, match="appeared while roost was making it"):
        _create_disk(inst.disk, base_image, "qcow2", 64 << 20)
    assert sha256(inst.disk) == before
    assert not inst.path("disk.qcow2.tmp").exists()


def test_prepare_disk_makes_a_synced_disk_and_pin(
        tmp_path: Path, base_image: Path, fsyncs: list[Synced]) -> None:
    inst = Instance.at("dev", tmp_path / "home")
    create_instance_dir(inst, {"roost.yaml": f"image: {base_image}\n"})
    fsyncs.clear()
    pinned = prepare_disk(inst, parse_config({"image": str(base_image)}))

    assert pinned.kind == "file" and pinned.disk == base_image
    assert inst.disk.is_file() and inst.path(PIN_FILE).is_file()
    synced = [(s.path.name, s.is_dir) for s in fsyncs]
    assert synced.index(("disk.qcow2.tmp", False)) < synced.index(("dev", True))
    assert any(name.startswith(f".{PIN_FILE}.") for name, is_dir in synced if not is_dir)
    assert not inst.path("disk.qcow2.tmp").exists()
    # Made once: a second start keeps it.
    inode = inst.disk.stat().st_ino
    assert prepare_disk(inst, parse_config({"image": str(base_image)})) == pinned
    assert inst.disk.stat().st_ino == inode


# -- suspend: the saved VM state on disk before it counts ----------------------------


def paused_machine(tmp: Path) -> QemuSpec:
    disk, cidata = tmp / "disk.qcow2", tmp / "cidata.iso"
    qemu_img("create", "-q", "-f", "qcow2", str(disk), "16M")
    cidata.write_bytes(b"\0" * 2048)
    return QemuSpec(
        name="dur", qemu="qemu-system-x86_64", accel="tcg", cpus=1, memory=64 * 1024**2,
        disk=disk, cidata=cidata, ssh_port=0, qmp_sock=tmp / "qmp.sock",
        ga_sock=tmp / "ga.sock", serial_sock=tmp / "serial.sock",
        serial_log=tmp / "serial.log", pidfile=tmp / "qemu.pid", boot=BootSpec(),
        ram_file=tmp / "ram.bin")


def test_save_state_returns_once_the_state_and_the_ram_file_are_synced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsyncs: list[Synced]) -> None:
    monkeypatch.setenv(OPT_OUT_ENV, "off")  # the sandbox is not what is tested
    spec = paused_machine(tmp_path)
    driver = QemuDriver(spec, tmp_path / "qemu.log")
    state = tmp_path / "vmstate.bin"

    async def suspend() -> float:
        await driver.start()
        try:
            return await driver.save_state(state)
        finally:
            await driver.quit()

    seconds = asyncio.run(suspend())
    assert seconds > 0 and state.stat().st_size > 0
    synced = [(s.path, s.is_dir) for s in fsyncs]
    assert (state, False) in synced and (tmp_path / "ram.bin", False) in synced
    dir_syncs = [i for i, (p, is_dir) in enumerate(synced) if p == tmp_path and is_dir]
    assert dir_syncs and dir_syncs[-1] > synced.index((state, False))
    assert dir_syncs[-1] > synced.index((tmp_path / "ram.bin", False))

