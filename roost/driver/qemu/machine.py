"""An instance's QEMU machine, from the driver-neutral VMDescription.

The host agent says what VM (config values, the pinned image, the
instance's files) and which shares; how QEMU boots it and which devices
serve the shares is decided here, and cmdline.py turns that into argv.
A suspended VM is restored from the machine it was saved as (saved_entries),
never rebuilt from a roost.yaml that may have changed since.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from roost.driver.base import DriverError, VMDescription
from roost.driver.qemu.accel import detect_accel
from roost.driver.qemu.cmdline import (
    KERNEL_APPEND,
    BootSpec,
    QemuSpec,
    ensure_uefi_vars,
    spec_from_json,
    spec_to_json,
)

# suspended.json's entry holding the machine a VM was saved from.
SAVED_MACHINE_KEY = "qemu"
UEFI_VARS_FILE = "uefi-vars.fd"
IMAGE_KERNEL_CMDLINE = "root=LABEL=cloudimg-rootfs ro console=ttyS0"


def find_qemu() -> str:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise DriverError(
            "qemu-system-x86_64 was not found; install it (scripts/setup.sh does: "
            "apt-get install qemu-system-x86 qemu-utils)"
        )
    return qemu


def machine_spec(vm: VMDescription) -> QemuSpec:
    inst, config = vm.inst, vm.config
    qemu = find_qemu()
    return QemuSpec(
        name=inst.name, qemu=qemu, accel=detect_accel(qemu), cpus=config.cpus,
        memory=config.memory, disk=inst.disk, cidata=inst.cidata,
        ssh_port=vm.ssh_port, qmp_sock=inst.qmp_sock, ga_sock=inst.ga_sock,
        serial_sock=inst.serial_sock, serial_log=inst.serial_log, pidfile=inst.qemu_pid,
        boot=boot_spec(vm),
        cpu_type=config.cpu_type,
        internet=config.network.internet,
        shares=vm.shares,
        data_disks=vm.disks,
        virtiofs_devices=not vm.restore,  # a suspend unplugged them
        # memfd RAM, not ram.bin: see bench/idle.py and cmdline.QemuSpec.ram_file.
        ram_file=None,
        incoming=inst.vmstate if vm.restore else None,
    )


def boot_spec(vm: VMDescription) -> BootSpec:
    pinned = vm.image
    if pinned.kind == "builtin":
        return BootSpec(pinned.kernel, pinned.initrd, KERNEL_APPEND
                        + (" roost.overlay=1" if vm.config.read_only_root else ""))
    if pinned.kernel is not None:  # an image's own kernel (Lima's images[].kernel)
        return BootSpec(pinned.kernel, pinned.initrd, pinned.kernel_cmdline or IMAGE_KERNEL_CMDLINE)
    if not vm.config.firmware.legacy_bios:
        return BootSpec(uefi_vars=ensure_uefi_vars(vm.inst.path(UEFI_VARS_FILE)))
    return BootSpec()  # SeaBIOS boots the disk


def saved_entries(spec: QemuSpec, state: Path,
                  memory_image: Path | None = None) -> dict[str, Any]:
    """suspended.json's entries for a VM whose state was saved into `state`
    (and its RAM into `memory_image`): the same machine, loading that state,
    without virtiofs devices (a VM with one cannot be saved)."""
    saved = dataclasses.replace(spec, incoming=state, memory_image=memory_image,
                                loadvm=None, virtiofs_devices=False)
    return {SAVED_MACHINE_KEY: spec_to_json(saved)}


def snapshot_entries(spec: QemuSpec, tag: str) -> dict[str, Any]:
    """The machine that loads snapshot `tag` of this one (a fork from the
    snapshot starts it): the same devices, the state from the disk's
    snapshot, RAM in a memfd of its own. A VM with virtiofs devices cannot
    be saved, so a snapshot with state has none."""
    machine = dataclasses.replace(spec, incoming=None, memory_image=None, ram_file=None,
                                  loadvm=tag, virtiofs_devices=False)
    return {SAVED_MACHINE_KEY: spec_to_json(machine)}


def saved_spec(saved: dict[str, Any]) -> QemuSpec | None:
    """The machine a suspended.json was written from; None when the file
    predates saved machines (then it is built again with restore=True)."""
    if SAVED_MACHINE_KEY not in saved:
        return None
    return spec_from_json(saved[SAVED_MACHINE_KEY])
