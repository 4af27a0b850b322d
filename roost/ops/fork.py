"""Fork: a new instance from another, with a machine identity of its own.

From a stopped instance it is a clone (roost.ops.instances.clone): the
configuration and a copy of the disk, booted afresh.

From a suspended one the fork also takes the saved memory and devices, so
it runs on from where the source was, without a boot: the
disk is copied (copy-on-write over the same base image, reflinked where
the file system can), the saved state too, and suspended.json is written
for the new directory: its paths, a new SSH port and instance-id, and
"forkedFrom". Its host agent then gives the guest the fork's own identity
on wake (roost.hostagent.checkpoint: host name, SSH host key, MAC), and a
new seed for its later boots. The source is left as it was, still
suspended.

From a snapshot (running, stopped or suspended source) the fork's disk is
the source's as it was at the snapshot. When the snapshot holds the VM's
state too, the fork runs on from there, as from a suspend: its
suspended.json names the machine the snapshot was taken on (recorded
beside it, Instance.snapshot_machine), which loads the snapshot from the
fork's copy of the disk and then drops it there. A snapshot of the disk
alone makes a stopped fork that boots that disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

from roost.driver.base import free_port
from roost.driver.qemu.machine import UEFI_VARS_FILE
from roost.errors import AlreadyExists, RoostError, UsageError, WrongState
from roost.ops import hostapi
from roost.ops.instances import CLONED_FILES, clone, copy_disk, drop_snapshots
from roost.store import snapshots
from roost.store.durable import write_atomic
from roost.store.instance import (
    FORKED_FROM,
    Instance,
    Status,
    create_instance_dir,
    operation_lock,
)
from roost.store.snapshots import check_tag
from roost.store.sparse import copy_sparse

COPY_TIMEOUT = 600.0  # the VM waits paused, as for savevm


def fork(old: str, new: str, snapshot: str | None = None) -> Instance:
    """NEW from OLD, stopped or suspended, or from OLD's snapshot (see the
    module's docstring)."""
    if snapshot is not None:
        return fork_snapshot(old, new, snapshot)
    source = Instance.at(old).require()
    status = source.status()
    if status == Status.STOPPED:
        return clone(old, new)
    if status != Status.SUSPENDED:
        raise WrongState(f"instance {old!r} is {status.value.lower()}; a fork is made from a "
                         f"stopped or suspended instance: `roost suspend {old}` (to fork its "
                         f"memory too) or `roost stop {old}` first", status.value)
    from roost.config.loader import load_config

    disks = [d.name for d in load_config(source.config).additional_disks]
    if disks:
        raise WrongState(f"instance {old!r} uses the disks {', '.join(disks)} "
                         "(additionalDisks), which belong to one instance at a time; a fork "
                         "of its memory would need them too. Stop it and clone it instead, "
                         "then give the clone disks of its own", status.value)
    target = _new_instance(new)
    with operation_lock(old, "fork it"), operation_lock(new, "create it"):
        if source.status() != Status.SUSPENDED:
            raise WrongState(f"instance {old!r} is no longer suspended", source.status().value)
        saved = source.read_suspended()

        def fill(tmp: Path) -> None:
            for filename in (*CLONED_FILES, source.cidata.name, UEFI_VARS_FILE):
                if source.path(filename).exists():
                    shutil.copy2(source.path(filename), tmp / filename)
            copy_disk(source.disk, tmp / source.disk.name)
            for state in (source.vmstate, source.ram_file):
                if state.exists():
                    copy_sparse(state, tmp / state.name)
            if source.memory_image.exists() and _saved_image(saved):
                # Read only, by either resume, and replaced (not rewritten) by
                # a suspend: one file for both, where the file system allows.
                try:
                    os.link(source.memory_image, tmp / source.memory_image.name)
                except OSError:
                    copy_sparse(source.memory_image, tmp / source.memory_image.name)
            write_atomic(tmp / source.suspended.name,
                         json.dumps(forked_state(saved, source, target)))

        create_instance_dir(target, {"roost.yaml": source.config.read_text()}, fill)
    return target


def fork_snapshot(old: str, new: str, tag: str) -> Instance:
    """NEW from snapshot TAG of OLD (see the module's docstring)."""
    check_tag(tag)
    source = Instance.at(old).require()
    target = _new_instance(new)
    with operation_lock(old, "fork it"), operation_lock(new, "create it"):
        status = source.status()
        if status not in (Status.RUNNING, Status.STOPPED, Status.SUSPENDED):
            raise WrongState(f"instance {old!r} is {status.value.lower()}; a fork from its "
                             "snapshot needs it running, stopped or suspended", status.value)
        snap = snapshots.find(source, tag)
        if snap is None:
            raise UsageError(f"instance {old!r} has no snapshot {tag!r} (see `roost snapshot "
                             f"list {old}`)")
        machine = _snapshot_machine(source, tag) if snap["vmStateSize"] else None
        running = status == Status.RUNNING

        def fill(tmp: Path) -> None:
            # The seed too: the saved machine opens it before the fork's own is written.
            for filename in (*CLONED_FILES, source.cidata.name, UEFI_VARS_FILE):
                if source.path(filename).exists():
                    shutil.copy2(source.path(filename), tmp / filename)
            disk = tmp / source.disk.name
            if running:  # whole only with QEMU's writes flushed: its host agent copies it
                hostapi.request(source.ha_sock, "POST", "/v1/disk/copy", {"path": str(disk)},
                                timeout=COPY_TIMEOUT)
            else:
                copy_sparse(source.disk, disk)
            if machine is None:
                _qemu_img("snapshot", "-a", tag, str(disk))
                drop_snapshots(disk)
                return
            drop_snapshots(disk, keep=tag)  # loaded by the fork, then dropped
            taken_in = str(machine.pop("dir"))  # the source's directory then
            state = forked_state(machine, source, target, also_moved=taken_in)
            state["configDigest"] = source.config_digest()  # the snapshot's (checked)
            write_atomic(tmp / source.suspended.name, json.dumps(state))

        create_instance_dir(target, {"roost.yaml": source.config.read_text()}, fill)
    return target


def _new_instance(name: str) -> Instance:
    target = Instance.at(name)
    target.check_socket_paths()
    if target.dir.exists() or target.dir.is_symlink():
        raise AlreadyExists(f"an instance named {name!r} exists already; pick another name",
                            usage=True)
    return target


def _snapshot_machine(source: Instance, tag: str) -> dict[str, Any]:
    """The machine snapshot `tag` was taken on, as its host agent recorded it."""
    record = source.snapshot_machine(tag)
    try:
        machine: dict[str, Any] = json.loads(record.read_text())
    except FileNotFoundError:
        raise RoostError(f"snapshot {tag!r} of {source.name!r} holds the VM's state, but not "
                         "which machine it was taken on (an older roost took it); a fork "
                         "needs that machine to load it. Take a new snapshot") from None
    except ValueError as e:
        raise RoostError(f"{record} is damaged ({e}); take a new snapshot") from None
    # The machine is roost.yaml's of then (network, shares, devices): loaded
    # under a roost.yaml that says otherwise, the guest would keep what the
    # edit took away. (An older record says nothing: refused too.)
    if machine.pop("configDigest", None) != source.config_digest():
        raise WrongState(f"roost.yaml of {source.name!r} has changed since snapshot {tag!r} "
                         "was taken, and the machine saved with its memory is the old "
                         "roost.yaml's; a fork of it would not be what roost.yaml says. Start "
                         f"{source.name!r}, take a new snapshot and fork from that",
                         source.status().value)
    if any(isinstance(v, dict) and v.get("data_disks") for v in machine.values()):
        raise WrongState(f"snapshot {tag!r} of {source.name!r} was taken with additionalDisks, "
                         "which belong to one instance at a time; a fork of its memory would "
                         "need them too", source.status().value)
    return machine


def _qemu_img(*args: str) -> None:
    proc = subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RoostError(f"qemu-img {args[0]}: {proc.stderr.strip()}")


def _saved_image(saved: dict[str, Any]) -> bool:
    """Whether the saved machine loads its RAM from an image (not one left over)."""
    return any(isinstance(v, dict) and v.get("memory_image") for v in saved.values())


def forked_state(saved: dict[str, Any], source: Instance, target: Instance,
                 also_moved: str | None = None) -> dict[str, Any]:
    """suspended.json for the fork: every path in the source's directory
    (or in `also_moved`, where it was) moved to the fork's, the machine
    named for it, a new SSH port and instance-id; no runtime mounts
    (roost.yaml's shares come back as on any resume)."""
    old_dirs = {str(source.dir), os.path.realpath(source.dir)}  # as it may be spelled
    if also_moved:
        old_dirs.add(also_moved)
    new_dir = str(target.dir)

    def moved(value: Any) -> Any:
        for old_dir in old_dirs:
            if isinstance(value, str) and (value == old_dir or value.startswith(old_dir + "/")):
                return new_dir + value[len(old_dir):]
        if isinstance(value, dict):
            return {k: moved(v) for k, v in value.items()}
        if isinstance(value, list):
            return [moved(v) for v in value]
        return value

    state: dict[str, Any] = moved(saved)
    port = free_port()
    for machine in (v for v in state.values() if isinstance(v, dict) and "ssh_port" in v):
        machine["ssh_port"] = port
        machine["name"] = target.name
    state.update({"sshLocalPort": port, "instanceId": f"i-{uuid.uuid4().hex[:12]}",
                  "mounts": [], FORKED_FROM: source.name})
    # Nothing of the source may be left for the fork's QEMU to open.
    left = [v for v in _strings(state) if any(v == d or f"{d}/" in v for d in old_dirs)]
    if left:
        raise RoostError(f"cannot fork {source.name}: its saved machine names "
                         f"{left[0]!r}, which is not moved with it; stop it and fork the "
                         "stopped instance instead")
    return state


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


