"""The QEMU machine built from a driver-neutral VMDescription, and the
machine a suspended VM is saved as (suspended.json, old files included)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from roost.config.loader import parse_config
from roost.driver.base import Share, VMDescription
from roost.driver.qemu.cmdline import build_argv, spec_from_json
from roost.driver.qemu.machine import (
    machine_spec,
    saved_entries,
    saved_spec,
    snapshot_entries,
)
from roost.image.disk import PinnedImage
from roost.store.instance import Instance


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ROOST_ACCEL", "tcg")
    (tmp_path / "home" / "dev").mkdir(parents=True)


def builtin(tmp: Path) -> PinnedImage:
    return PinnedImage("builtin", tmp / "base.qcow2", tmp / "vmlinux", tmp / "initrd.img")


def option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def shares(inst: Instance) -> tuple[Share, ...]:
    return (Share(id="mnt0", type="virtiofs", tag="roost0", host_path="/srv/a", writable=True,
                  socket=inst.dir / "mnt0.vfs.sock", slot="mnt0-port", queue_size=512),)


def describe(tmp: Path, config: dict[str, Any] | None = None, image: PinnedImage | None = None,
             restore: bool = False, with_shares: bool = True) -> VMDescription:
    inst = Instance.at("dev")
    return VMDescription(inst=inst, config=parse_config(config or {}),
                         image=image or builtin(tmp), ssh_port=40022,
                         shares=shares(inst) if with_shares else (), restore=restore)


def test_description_to_machine(tmp_path: Path) -> None:
    vm = describe(tmp_path, {"cpus": 3, "memory": "1GiB", "readOnlyRoot": True})
    spec = machine_spec(vm)
    assert (spec.cpus, spec.memory, spec.ssh_port, spec.accel) == (3, 1024**3, 40022, "tcg")
    assert (spec.disk, spec.qmp_sock, spec.ram_file) == (vm.inst.disk, vm.inst.qmp_sock, None)
    assert "memory-backend-memfd,id=mem,size=1024M,share=on" in build_argv(spec)
    argv = build_argv(spec)
    assert option(argv, "-kernel") == [str(tmp_path / "vmlinux")]
    assert option(argv, "-append")[0].endswith(" roost.overlay=1")
    sock = vm.inst.dir / "mnt0.vfs.sock"
    assert f"socket,id=mnt0-chr,path={sock}" in option(argv, "-chardev")
    devices = option(argv, "-device")
    assert "pcie-root-port,id=mnt0-port,bus=pcie.0,chassis=100" in devices
    assert ("vhost-user-fs-pci,id=mnt0,bus=mnt0-port,chardev=mnt0-chr,tag=roost0,"
            "queue-size=512") in devices
    assert "-incoming" not in argv


def test_boot_of_other_images(tmp_path: Path) -> None:
    own_kernel = PinnedImage("cloud", tmp_path / "c.qcow2", tmp_path / "vmlinuz", None, None)
    boot = machine_spec(describe(tmp_path, image=own_kernel)).boot
    assert boot.kernel == tmp_path / "vmlinuz" and "root=LABEL=cloudimg-rootfs" in boot.append
    disk_only = PinnedImage("cloud", tmp_path / "c.qcow2")
    assert machine_spec(describe(tmp_path, image=disk_only)).boot.kernel is None
    uefi = describe(tmp_path, {"firmware": {"legacyBIOS": False}}, image=disk_only)
    vars_file = machine_spec(uefi).boot.uefi_vars
    assert vars_file is not None and vars_file.parent == uefi.inst.dir and vars_file.exists()


def test_nine_p_share_is_a_launch_time_fsdev(tmp_path: Path) -> None:
    share = Share(id="mnt0", type="9p", tag="roost0", host_path="/srv/odd,name",
                  writable=False, security_model="mapped-xattr")
    vm = VMDescription(inst=Instance.at("dev"), config=parse_config({}), image=builtin(tmp_path),
                       ssh_port=40022, shares=(share,))
    argv = build_argv(machine_spec(vm))
    assert option(argv, "-fsdev") == [
        "local,id=mnt0-fs,path=/srv/odd,,name,security_model=mapped-xattr,readonly=on"]
    assert "virtio-9p-pci,id=mnt0,fsdev=mnt0-fs,mount_tag=roost0" in option(argv, "-device")


def test_machine_as_saved_is_the_restore_machine(tmp_path: Path) -> None:
    """What a suspend writes builds the same QEMU as describing the VM with
    restore=True: state loaded, virtiofs devices gone, their root ports kept."""
    vm = describe(tmp_path)
    entries = json.loads(json.dumps(saved_entries(machine_spec(vm), vm.inst.vmstate)))
    restored = saved_spec(entries)
    assert restored is not None
    argv = build_argv(restored)
    assert argv == build_argv(machine_spec(describe(tmp_path, restore=True)))
    assert "pcie-root-port,id=mnt0-port,bus=pcie.0,chassis=100" in option(argv, "-device")
    assert not any("vhost-user-fs" in d for d in option(argv, "-device"))
    assert argv[argv.index("-S"):][:3] == ["-S", "-incoming", "defer"]
    assert saved_spec({"sshLocalPort": 40022}) is None  # predates saved machines


def test_the_machine_at_a_snapshot_loads_it_paused(tmp_path: Path) -> None:
    """What a fork from a snapshot starts: the same machine, paused (-S)
    with nothing incoming (loadvm comes over QMP), RAM in a memfd; and a
    suspend of that fork saves a machine that no longer loads the snapshot."""
    vm = describe(tmp_path, with_shares=False)
    spec = machine_spec(vm)
    entries = json.loads(json.dumps(snapshot_entries(spec, "s1")))
    at_snapshot = saved_spec(entries)
    assert at_snapshot is not None and at_snapshot.loadvm == "s1"
    assert at_snapshot.incoming is None and at_snapshot.ram_file is None
    argv = build_argv(at_snapshot, ram_fd=7)
    assert "-S" in argv and "-incoming" not in argv and "-loadvm" not in argv
    assert build_argv(spec, ram_fd=7) == [a for a in argv if a != "-S"]
    suspended = saved_spec(saved_entries(at_snapshot, vm.inst.vmstate))
    assert suspended is not None and suspended.loadvm is None
    assert argv_tail(build_argv(suspended)) == ["-S", "-incoming", "defer"]


def argv_tail(argv: list[str]) -> list[str]:
    return argv[argv.index("-S"):][:3]


def test_suspended_json_of_an_older_roost_still_loads(tmp_path: Path) -> None:
    """Before shares were records, the saved machine held their devices as
    arguments in `extra`: such a file builds the same QEMU as a new one."""
    inst = Instance.at("dev")
    d = str(inst.dir)
    old = {
        "name": "dev", "qemu": "/usr/bin/qemu-system-x86_64", "accel": "tcg", "cpus": 2,
        "memory": 2 * 1024**3, "disk": f"{d}/disk.qcow2", "cidata": f"{d}/cidata.iso",
        "ssh_port": 40022, "qmp_sock": f"{d}/qmp.sock", "ga_sock": f"{d}/ga.sock",
        "serial_sock": f"{d}/serial.sock", "serial_log": f"{d}/serial.log",
        "pidfile": f"{d}/qemu.pid",
        "boot": {"kernel": str(tmp_path / "vmlinux"), "initrd": str(tmp_path / "initrd.img"),
                 "append": "console=ttyS0 quiet panic=-1 cryptomgr.notests 8250.nr_uarts=1",
                 "uefi_vars": None},
        "extra": ["-device", "pcie-root-port,id=mnt0-port,bus=pcie.0,chassis=100"],
        "ram_file": f"{d}/ram.bin", "incoming": f"{d}/vmstate.bin", "cpu_type": None,
    }
    loaded = spec_from_json(old)
    assert loaded.shares == () and loaded.incoming == inst.vmstate
    new = machine_spec(describe(tmp_path, {"memory": "2GiB"}, restore=True))
    # The same machine ([0]: where QEMU is installed), but for its RAM: the
    # old one resumes from its ram.bin, a new one's from vmstate.ram through
    # the driver's memfd (QEMU's own here, built without one).
    old_argv, new_argv = build_argv(loaded)[1:], build_argv(new)[1:]
    ram = old_argv.index(f"memory-backend-file,id=mem,size=2048M,share=on,mem-path={d}/ram.bin")
    assert new_argv[ram] == "memory-backend-memfd,id=mem,size=2048M,share=on"
    assert old_argv[:ram] + old_argv[ram + 1:] == new_argv[:ram] + new_argv[ram + 1:]
