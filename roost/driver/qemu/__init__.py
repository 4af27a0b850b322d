"""QEMU driver (q35, TCG or KVM, QMP through qemu.qmp)."""

from roost.driver.qemu.driver import QemuDriver
from roost.driver.qemu.machine import find_qemu

__all__ = ["QemuDriver", "find_qemu"]
