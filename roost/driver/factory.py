"""Which driver runs an instance: the one place that names a driver.

The host agent describes the VM (VMDescription) and gets a Driver; it never
builds a driver's machine itself. QEMU is the only driver so far.
"""

from __future__ import annotations

from typing import Any

from roost.driver.base import Driver, SuspendableDriver, VMDescription
from roost.driver.qemu.driver import QemuDriver
from roost.driver.qemu.machine import machine_spec, saved_spec
from roost.store.instance import Instance


def create_driver(vm: VMDescription) -> Driver:
    return QemuDriver(machine_spec(vm), vm.inst.qemu_log)


def restore_driver(inst: Instance, saved: dict[str, Any]) -> SuspendableDriver | None:
    """The driver that loads the state a suspend saved, on the machine it was
    saved from (`saved` is suspended.json); None when the file does not
    hold that machine (written by an older roost): create_driver() with
    restore=True then builds it from roost.yaml."""
    spec = saved_spec(saved)
    return None if spec is None else QemuDriver(spec, inst.qemu_log)
