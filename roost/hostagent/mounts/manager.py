"""Host folders in the guest: static mounts from roost.yaml, runtime hot-mounts.

The registry lives here, in the host agent (runtime mounts are ephemeral,
never written to roost.yaml). A hot-mount is a list of steps, each with its
undo: start virtiofsd, have the driver plug its device into a spare slot
(its FileSystemHotplug capability), mount in the guest through the guest
agent. When a step fails the steps that succeeded are undone, newest
first, and the registry is unchanged.

9p cannot be hot-mounted on QEMU 7.2: an fsdev (the exported host folder)
can only be declared at launch, and there is no fsdev_add. Hot-mounting 9p
is refused with that reason; virtiofs or reverse-sshfs do the job.

Suspend: a vhost-user-fs device, and a 9p export while the guest has it
mounted, block saving the VM state. So every share leaves the guest before
the save: runtime mounts are removed (and added again after the restore);
roost.yaml's are unmounted in the guest, and their virtiofs devices, which
sit on root ports of their own for this, are unplugged, to be plugged and
mounted again after the restore.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roost.config.model import Config, Mount
from roost.driver.base import FileSystemHotplug, Share
from roost.errors import RoostError, UsageError, cut, quote
from roost.hostagent.guestagent import GuestAgentClient, GuestAgentError
from roost.hostagent.mounts.sftp import SHARE_IN_ROOT, SftpGrants
from roost.hostagent.mounts.virtiofsd import Virtiofsd, find_virtiofsd
from roost.hostagent.userns import setgroups_problem
from roost_guest.protocol import guest_mount_point_problem

log = logging.getLogger(__name__)

MOUNT_TIMEOUT = 30.0


class MountFailed(RoostError):
    """A mount that could not be made (the instance keeps running)."""


def default_mount_type(config: Config) -> str:
    if config.mount_type:
        return config.mount_type
    # virtiofs where its confined daemon can run (a normal user needs newgidmap
    # and a subordinate gid range), else reverse-sshfs; both can be hot-mounted.
    # 9p only when asked for: it cannot be (QEMU 7.2 has no fsdev_add).
    preferred = ["virtiofs"] if find_virtiofsd() and setgroups_problem() is None else []
    for kind in [*preferred, "reverse-sshfs"]:
        if kind not in config.mount_types_unsupported:
            return kind
    return "reverse-sshfs"


def check_host_path(location: str) -> str:
    path = os.path.abspath(os.path.expanduser(location))
    if "\n" in path or "\0" in path:
        raise UsageError(f"host path {quote(path)} contains a NUL or newline")
    if not os.path.exists(path):
        raise UsageError(f"host path {cut(path)} does not exist")
    if not os.path.isdir(path):
        raise UsageError(f"host path {cut(path)} is not a directory")
    return path


def check_guest_path(mount_point: str) -> str:
    problem = guest_mount_point_problem(mount_point)
    if problem:
        raise UsageError(cut(problem))
    return os.path.normpath(mount_point)


@dataclass
class MountRecord:
    location: str
    mount_point: str
    type: str
    writable: bool
    ephemeral: bool
    tag: str = ""
    slot: str | None = None
    device_id: str | None = None
    virtiofsd: Virtiofsd | None = None
    options: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    detached: bool = False  # a roost.yaml share taken out for a suspend

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "location": self.location, "mountPoint": self.mount_point, "type": self.type,
            "writable": self.writable, "ephemeral": self.ephemeral,
            "state": "failed" if self.error else "mounted",
        }
        if self.slot:
            out["slot"] = self.slot
        if self.error:
            out["error"] = self.error
        return out


def static_records(config: Config, inst_dir: Path) -> list[MountRecord]:
    """roost.yaml's mounts, with the tags and sockets their devices use."""
    kind = default_mount_type(config)
    out = []
    for i, m in enumerate(config.mounts):
        rec = MountRecord(location=os.path.abspath(m.location),
                          mount_point=os.path.normpath(m.mount_point or m.location),
                          type=kind, writable=m.writable, ephemeral=False, tag=f"roost{i}",
                          device_id=f"mnt{i}", options=_options(m, kind))
        if kind == "virtiofs":
            rec.slot = f"mnt{i}-port"  # a root port of its own: unpluggable for suspend
        out.append(rec)
    return out


def _options(m: Mount, kind: str) -> dict[str, Any]:
    if kind == "9p":
        o = m.nine_p
        return {"securityModel": o.security_model, "version": o.protocol_version,
                "msize": o.msize, "cache": o.cache}
    if kind == "virtiofs":
        return {"queueSize": m.virtiofs.queue_size}
    return {"cache": m.sshfs.cache, "followSymlinks": m.sshfs.follow_symlinks}


def boot_shares(records: list[MountRecord], inst_dir: Path) -> tuple[Share, ...]:
    """The shares whose devices the VM has from launch: roost.yaml's
    virtiofs and 9p mounts (reverse-sshfs needs no device)."""
    return tuple(_share(rec, inst_dir) for rec in records if rec.type in ("virtiofs", "9p"))


def _share(rec: MountRecord, inst_dir: Path) -> Share:
    """What the driver is told of a share: no host agent record crosses over."""
    return Share(id=rec.device_id or "", type=rec.type, tag=rec.tag, host_path=rec.location,
                 writable=rec.writable, slot=rec.slot,
                 socket=_virtiofsd_socket(inst_dir, rec) if rec.type == "virtiofs" else None,
                 queue_size=int(rec.options.get("queueSize", 1024)),
                 security_model=str(rec.options.get("securityModel", "mapped-xattr")))


def _virtiofsd_socket(inst_dir: Path, rec: MountRecord) -> Path:
    return inst_dir / f"{rec.device_id}.vfs.sock"


class MountManager:
    def __init__(self, inst_dir: Path, hotplug: FileSystemHotplug | None,
                 opener: Callable[[], Awaitable[GuestAgentClient]],
                 static: list[MountRecord], default_type: str = "virtiofs",
                 unsupported: tuple[str, ...] = ()) -> None:
        self.inst_dir = inst_dir
        self.default_type = default_type
        self.unsupported = unsupported
        self.hotplug = hotplug  # None: the driver cannot plug devices into a running VM
        self.opener = opener
        self.records: dict[str, MountRecord] = {r.mount_point: r for r in static}
        self._lock = asyncio.Lock()
        self._counter = 0
        self.sftp = SftpGrants()  # what reverse-sshfs streams from the guest may serve

    def listing(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in sorted(self.records.values(), key=lambda r: r.mount_point)]

    # -- virtiofsd processes (static ones start before QEMU) -------------------

    def _virtiofsd(self, rec: MountRecord) -> Virtiofsd:
        binary = find_virtiofsd()
        if binary is None:
            raise MountFailed("no virtiofsd found (Debian: the qemu-system-common package); "
                              "use --type 9p or reverse-sshfs")
        sock = _virtiofsd_socket(self.inst_dir, rec)
        return Virtiofsd(binary, sock, rec.location, self.inst_dir / f"{rec.device_id}.vfs.log",
                         writable=rec.writable)

    async def start_static_daemons(self) -> None:
        for rec in self.records.values():
            if rec.type == "virtiofs" and not rec.detached:
                rec.virtiofsd = self._virtiofsd(rec)
                await rec.virtiofsd.start()

    def adopt_static_daemons(self) -> None:
        """Taking over a running VM: its static shares are served by virtiofsd
        processes the host agent that died started; stop them by pid later."""
        for rec in self.records.values():
            if rec.type == "virtiofs" and rec.virtiofsd is None:
                daemon = self._virtiofsd(rec)
                if daemon.adopt():
                    rec.virtiofsd = daemon

    def _require_hotplug(self) -> FileSystemHotplug:
        if self.hotplug is None:
            raise UsageError("this instance's driver cannot plug file systems into a running "
                             "VM; use --type reverse-sshfs")
        return self.hotplug

    async def _plug(self, rec: MountRecord) -> None:
        """A virtiofs share's virtiofsd, then its device on the record's root port."""
        assert rec.device_id is not None and rec.slot is not None
        hotplug = self._require_hotplug()
        daemon = self._virtiofsd(rec)
        await daemon.start()
        try:
            await hotplug.hotplug_virtiofs(_share(rec, self.inst_dir))
        except BaseException:
            await daemon.stop()
            raise
        rec.virtiofsd = daemon

    async def _unplug(self, rec: MountRecord) -> None:
        """The device off its root port, then its virtiofsd (if it has them)."""
        if rec.type == "virtiofs" and rec.device_id and rec.slot:
            await self._require_hotplug().unplug(rec.device_id)
        if rec.virtiofsd is not None:
            await rec.virtiofsd.stop()
            rec.virtiofsd = None

    async def stop_daemons(self) -> None:
        """At shutdown, after QEMU is gone: every virtiofsd, never blocking long."""
        for rec in self.records.values():
            if rec.virtiofsd is not None:
                await rec.virtiofsd.stop()

    # -- guest side -------------------------------------------------------------

    async def _guest_mount(self, rec: MountRecord) -> None:
        params: dict[str, Any] = {"mountPoint": rec.mount_point, "readonly": not rec.writable}
        token = ""
        if rec.type == "reverse-sshfs":
            token = self.sftp.grant(rec.location, rec.writable)
            params.update(fstype="reverse-sshfs", remotePath=SHARE_IN_ROOT, token=token,
                          cache=rec.options.get("cache", True),
                          followSymlinks=rec.options.get("followSymlinks", False))
        else:
            params.update(fstype=rec.type, tag=rec.tag,
                          **{k: v for k, v in rec.options.items() if v is not None})
        try:
            client = await self.opener()
            await client.request("mount", timeout=MOUNT_TIMEOUT, **params)
        except GuestAgentError as e:
            raise MountFailed(f"mounting {rec.location} at {rec.mount_point} in the guest "
                              f"failed: {e}") from None
        finally:
            self.sftp.revoke(token)  # used by now, or never to be

    async def _guest_umount(self, rec: MountRecord, force: bool = False) -> None:
        try:
            client = await self.opener()
            await client.request("umount", timeout=MOUNT_TIMEOUT,
                                 mountPoint=rec.mount_point, force=force)
        except GuestAgentError as e:
            raise MountFailed(f"unmounting {rec.mount_point} in the guest failed: {e}") from None

    async def mount_static(self) -> list[str]:
        """Mount roost.yaml's shares in the guest; the errors, one per failed share."""
        errors = []
        for rec in list(self.records.values()):
            if rec.ephemeral or rec.detached:  # detached: reattach_static failed (reported)
                continue
            try:
                await self._guest_mount(rec)
                rec.error = ""
            except MountFailed as e:
                rec.error = str(e)
                errors.append(str(e))
        return errors

    # -- runtime hot-mounts -------------------------------------------------------

    async def add(self, location: str, mount_point: str, kind: str,
                  writable: bool) -> dict[str, Any]:
        location = check_host_path(location)
        mount_point = check_guest_path(mount_point)
        kind = kind or self.default_type
        if kind in self.unsupported:
            raise UsageError(f"this instance's image does not support {kind} mounts "
                             f"(mountTypesUnsupported in roost.yaml); use --type "
                             + " or ".join(k for k in ("virtiofs", "reverse-sshfs")
                                           if k not in self.unsupported))
        if kind == "9p":
            raise UsageError(
                "9p cannot be hot-mounted: QEMU 7.2 declares a 9p export (fsdev) only at "
                "launch and has no fsdev_add; use --type virtiofs or reverse-sshfs, or add "
                "the share to roost.yaml's mounts")
        if kind not in ("virtiofs", "reverse-sshfs"):
            raise UsageError(f"unknown mount type {kind!r}: use virtiofs, 9p or reverse-sshfs")
        async with self._lock:
            if mount_point in self.records:
                raise UsageError(f"{mount_point} is already mounted "
                                 f"(from {self.records[mount_point].location})")
            self._counter += 1
            rec = MountRecord(location=location, mount_point=mount_point, type=kind,
                              writable=writable, ephemeral=True,
                              tag=f"roost-hot{self._counter}", device_id=f"hot{self._counter}")
            undo: list[Callable[[], Awaitable[None]]] = []
            try:
                if kind == "virtiofs":
                    slots = self._require_hotplug().hotplug_slots()
                    used = {r.slot for r in self.records.values()}
                    free = [s for s in slots if s not in used]
                    if not free:
                        raise UsageError(f"all {len(slots)} hot-plug slots are in use; "
                                         "remove a mount first (roost mount remove)")
                    rec.slot = free[0]
                    await self._plug(rec)
                    undo.append(lambda: self._unplug(rec))
                await self._guest_mount(rec)
            except BaseException as e:
                for step in reversed(undo):
                    try:
                        await step()
                    except Exception as undo_error:
                        log.warning("rolling back %s: %s", mount_point, undo_error)
                if isinstance(e, RoostError) or not isinstance(e, Exception):
                    raise
                raise MountFailed(f"hot-mount of {location} failed: {e}") from None
            self.records[mount_point] = rec
            return rec.to_json()

    async def readd(self, mounts: list[dict[str, Any]]) -> list[str]:
        """Mount again what listing() described (after a suspend); the errors."""
        errors = []
        for m in mounts:
            if m["mountPoint"] in self.records:  # never removed (a suspend that failed early)
                continue
            try:
                await self.add(m["location"], m["mountPoint"], m["type"], m["writable"])
            except RoostError as e:
                errors.append(f"remounting {m['mountPoint']}: {e}")
        return errors

    async def detach_all(self) -> list[dict[str, Any]]:
        """Before saving the VM state: every share out of the guest (see the
        module's doc); the runtime mounts removed, as listing() gave them."""
        hot = [r.to_json() for r in self.records.values() if r.ephemeral]
        for rec in list(self.records.values()):
            if rec.ephemeral:
                await self.remove(rec.mount_point)
                continue
            async with self._lock:
                try:
                    if not rec.error:  # else it was never mounted in the guest
                        await self._guest_umount(rec)
                except MountFailed as e:
                    raise MountFailed(f"{e}; a process in the guest may be using it (its "
                                      "current directory or an open file)") from None
                rec.detached = True
                await self._unplug(rec)
        return hot

    async def reattach_static(self, mount_in_guest: bool) -> list[str]:
        """roost.yaml's shares back after detach_all(): each virtiofs device
        plugged again, and mounted in the guest unless `mount_static()` will
        do that (after a resume, as after a boot); the errors."""
        errors = []
        for rec in self.records.values():
            if rec.ephemeral or not rec.detached:
                continue
            try:
                if rec.type == "virtiofs" and rec.virtiofsd is None:
                    await self._plug(rec)
                rec.detached = False
                if mount_in_guest:
                    await self._guest_mount(rec)
            except RoostError as e:
                rec.error = str(e)
                errors.append(f"{rec.mount_point}: {e}")
        return errors

    async def remove(self, mount_point: str) -> dict[str, Any]:
        mount_point = os.path.normpath(mount_point)
        async with self._lock:
            rec = self.records.get(mount_point)
            if rec is None:
                raise UsageError(f"nothing is mounted at {mount_point} "
                                 "(see roost mount list)")
            if not rec.ephemeral:
                raise UsageError(f"{mount_point} comes from roost.yaml; remove it there and "
                                 "restart the instance")
            await self._guest_umount(rec)
            await self._unplug(rec)
            del self.records[mount_point]
            return rec.to_json()
