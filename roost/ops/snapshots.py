"""Snapshots: through the host agent (QMP) while the instance runs, with
qemu-img on the disk while it is stopped."""

from __future__ import annotations

import urllib.parse
from typing import Any, Literal

from roost.errors import WrongState
from roost.ops import hostapi
from roost.store import snapshots
from roost.store.instance import Instance, Status, operation_lock

SNAPSHOT_TIMEOUT = 300.0  # savevm writes guest RAM into the qcow2

# What a snapshot holds: "vm" (disk and the running VM's state), "disk"
# (taken while stopped), "disk-only" (running, but a shared folder device
# blocked saving the VM's state).
Kind = Literal["vm", "disk", "disk-only"]


def _instance(name: str) -> tuple[Instance, bool]:
    inst = Instance.at(name).require()
    status = inst.status()
    if status not in (Status.RUNNING, Status.STOPPED):
        raise WrongState(f"instance {name!r} is {status.value.lower()}; "
                         f"snapshots need it running or stopped", status.value)
    return inst, status == Status.RUNNING


def create(name: str, tag: str) -> Kind:
    """Take snapshot `tag` of NAME; what it holds."""
    from roost.hostagent.apimodels import SnapshotCreate

    snapshots.check_tag(tag)
    inst, running = _instance(name)
    if running:
        result = hostapi.request(inst.ha_sock, "POST", "/v1/snapshots",
                                 SnapshotCreate(tag=tag).wire(), timeout=SNAPSHOT_TIMEOUT)
        return "vm" if result["state"] == "vm" else "disk-only"
    with operation_lock(name, "snapshot it"):
        snapshots.create_offline(inst, tag)
    return "disk"


def apply(name: str, tag: str) -> None:
    """Bring NAME back to snapshot `tag` (a running VM jumps back with its memory)."""
    snapshots.check_tag(tag)
    inst, running = _instance(name)
    if running:
        hostapi.request(inst.ha_sock, "POST", f"/v1/snapshots/{urllib.parse.quote(tag)}/apply",
                        timeout=SNAPSHOT_TIMEOUT)
        return
    with operation_lock(name, "apply a snapshot"):
        snapshots.apply_offline(inst, tag)


def delete(name: str, tag: str) -> None:
    snapshots.check_tag(tag)
    inst, running = _instance(name)
    if running:
        hostapi.request(inst.ha_sock, "DELETE", f"/v1/snapshots/{urllib.parse.quote(tag)}",
                        timeout=SNAPSHOT_TIMEOUT)
        return
    with operation_lock(name, "delete a snapshot"):
        snapshots.delete_offline(inst, tag)


def listing(name: str) -> list[dict[str, Any]]:
    """NAME's snapshots: tag, vmStateSize, date (as qemu-img tells them)."""
    return snapshots.list_snapshots(Instance.at(name).require())
