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

A host agent can die (kill -9) while the VM runs on: the runtime mounts are
kept in mounts.json (state.py) on every change, and the host agent that
takes the VM over restores them and adopts their virtiofsd. Every daemon
serving a share is watched; one that dies marks its share failed at once
(guest I/O on it would hang), reported through `on_failure`, and
`remove(force=True)` then aborts the share in the guest so I/O fails instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roost.config.model import Config, Mount
from roost.driver.base import FileSystemHotplug, Share
from roost.errors import RoostError, UsageError, cut, quote
from roost.hostagent.guestagent import GuestAgentClient, GuestAgentError
from roost.hostagent.mounts import state
from roost.hostagent.mounts.sftp import SHARE_IN_ROOT, Grant, SftpGrants
from roost.hostagent.mounts.virtiofsd import Virtiofsd, find_virtiofsd
from roost.hostagent.userns import setgroups_problem
from roost_guest.protocol import guest_mount_point_problem

log = logging.getLogger(__name__)

MOUNT_TIMEOUT = 30.0
# A daemon that ends this soon before the VM does went with it (QEMU's exit
# closes its end of the socket): no failure of the share to report.
VM_EXIT_GRACE = 0.5
HOT_DEVICE_RE = re.compile(r"^hot(\d+)\.")  # hotN.vfs.sock, .pid, .log in the instance dir


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
    removing: bool = False  # its daemon's end is expected from now on
    watcher: asyncio.Future[None] | None = field(default=None, repr=False)

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
        self.sftp = SftpGrants(self._sftp_server_ended)  # what reverse-sshfs streams may serve
        # Set by the host agent: a share whose daemon died; any change of the registry.
        self.on_failure: Callable[[MountRecord], None] = lambda rec: None
        self.on_change: Callable[[], None] = lambda: None
        self.vm_running: Callable[[], bool] = lambda: True
        self._watching = True
        self._saved_pids: dict[str, int] = {}  # restored mounts' virtiofsd, by mount point

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
                self._watch(rec)

    def adopt_daemons(self) -> None:
        """Taking over a running VM: its shares are served by virtiofsd
        processes the host agent that died started; each is watched from
        now on and stopped by pid later. One that is gone leaves its share
        failed, and so does every reverse-sshfs runtime mount: its SFTP
        stream ran over the dead host agent's guest agent connection."""
        for rec in self.records.values():
            if rec.error or rec.detached:
                continue
            if rec.type == "reverse-sshfs" and rec.ephemeral:
                self._fail(rec, f"reverse-sshfs share {rec.location} lost its SFTP server "
                           "with the host agent that served it (killed); "
                           f"`roost mount remove` it and add it again")
            elif rec.type == "virtiofs" and rec.virtiofsd is None:
                daemon = self._virtiofsd(rec)
                if daemon.adopt(self._saved_pids.get(rec.mount_point)):
                    rec.virtiofsd = daemon
                    self._watch(rec)
                else:
                    self._fail(rec, f"virtiofsd serving {rec.location} at {rec.mount_point} "
                               "did not outlive the host agent that started it")

    # -- runtime mounts on disk (a successor's to restore) ---------------------

    def restore_runtime(self) -> None:
        """The runtime mounts and hot-plug counter a host agent that died
        saved (state.py); raises MountStateError when mounts.json is torn,
        leaving the counter past every hotN file in the instance directory."""
        self._counter = self._highest_hot_number()
        saved = state.load(self.inst_dir)
        self._counter = max(self._counter, saved.counter)
        for m in saved.mounts:
            if m.mount_point in self.records:  # roost.yaml's now: theirs wins
                continue
            self.records[m.mount_point] = MountRecord(
                location=m.location, mount_point=m.mount_point, type=m.type,
                writable=m.writable, ephemeral=True, tag=m.tag, slot=m.slot,
                device_id=m.device_id, options=dict(m.options), error=m.error)
            if m.virtiofsd_pid:
                self._saved_pids[m.mount_point] = m.virtiofsd_pid

    def _highest_hot_number(self) -> int:
        numbers = [int(m.group(1)) for name in os.listdir(self.inst_dir)
                   if (m := HOT_DEVICE_RE.match(name))]
        return max(numbers, default=0)

    def _save(self) -> None:
        saved = []
        for rec in self.records.values():
            if not rec.ephemeral or rec.device_id is None:
                continue
            daemon = rec.virtiofsd
            saved.append(state.SavedMount(
                location=rec.location, mount_point=rec.mount_point, type=rec.type,
                writable=rec.writable, tag=rec.tag, device_id=rec.device_id, slot=rec.slot,
                options=rec.options, virtiofsd_pid=daemon.pid if daemon else None,
                virtiofsd_socket=str(daemon.socket_path) if daemon else None, error=rec.error))
        state.save(self.inst_dir, self._counter, saved)

    def discard_saved(self) -> None:
        """The host agent ends with its VM: nothing to take over."""
        state.discard(self.inst_dir)

    # -- watching the daemons ------------------------------------------------

    def _watch(self, rec: MountRecord) -> None:
        if rec.virtiofsd is not None:
            rec.watcher = asyncio.ensure_future(self._watch_virtiofsd(rec, rec.virtiofsd))

    async def _watch_virtiofsd(self, rec: MountRecord, daemon: Virtiofsd) -> None:
        pid = daemon.pid
        how = await daemon.exited()
        if await self._end_expected(rec) or rec.virtiofsd is not daemon:
            return
        self._fail(rec, f"virtiofsd (pid {pid}) serving {rec.location} at {rec.mount_point} "
                   f"{how}; guest I/O there fails once `roost mount remove --force "
                   f"{rec.mount_point}` detaches it" if rec.ephemeral else
                   f"virtiofsd (pid {pid}) serving {rec.location} at {rec.mount_point} "
                   f"{how}; restart the instance to serve it again")

    async def _end_expected(self, rec: MountRecord) -> bool:
        """A daemon's end that is no failure: its share was being removed,
        the host agent is shutting down, or the VM went (a moment later)."""
        if rec.removing or not self._watching:
            return True
        await asyncio.sleep(VM_EXIT_GRACE)
        return rec.removing or not self._watching or not self.vm_running()

    async def _unwatch(self, rec: MountRecord) -> None:
        watcher, rec.watcher = rec.watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher

    async def unwatch_all(self) -> None:
        """Before the VM is stopped: its daemons end with it, as they should."""
        self._watching = False
        for rec in self.records.values():
            await self._unwatch(rec)

    def _fail(self, rec: MountRecord, reason: str) -> None:
        log.error("%s", reason)
        rec.error = reason
        if rec.ephemeral:
            self._save()
        self.on_failure(rec)

    def _sftp_server_ended(self, grant: Grant, how: str) -> None:
        """serve_sftp's server ended: a failure unless the share was being removed."""
        rec = self.records.get(grant.mount_point)
        if rec is None or rec.removing or rec.error or not self._watching \
                or rec.type != "reverse-sshfs":
            return
        self._fail(rec, f"sftp-server serving {rec.location} at {rec.mount_point} {how}; "
                   f"guest I/O there fails; `roost mount remove {rec.mount_point}` it and "
                   "add it again")

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
        self._watch(rec)

    async def _unplug(self, rec: MountRecord) -> None:
        """The device off its root port, then its virtiofsd (if it has them)."""
        await self._unwatch(rec)  # the daemon ends with the device, as it should
        if rec.type == "virtiofs" and rec.device_id and rec.slot:
            await self._require_hotplug().unplug(rec.device_id)
        if rec.virtiofsd is not None:
            await rec.virtiofsd.stop()
            rec.virtiofsd = None

    async def _unplug_dead_virtiofs(self, rec: MountRecord) -> None:
        """A virtiofs share whose daemon may be dead leaves the guest device
        first: Linux's virtiofs has no abort (no fusectl entry, no MNT_FORCE),
        but once its device is gone every request on it fails (ENOTCONN), so
        the unmount after it, and any I/O, no longer waits for the daemon.
        Requests already in flight when the daemon died hold the guest's
        device removal (it drains them): then only stopping the VM frees them."""
        try:
            await self._unplug(rec)
        except RoostError as e:
            raise MountFailed(
                f"{rec.mount_point}: {e}. I/O was waiting on the share when its virtiofsd "
                "died, and the guest kernel cannot cancel it; stop the instance "
                "(roost stop) to free it") from None
        rec.slot = None  # unplugged: a retry of the unmount plugs nothing out

    async def stop_daemons(self) -> None:
        """At shutdown, after QEMU is gone: every virtiofsd, never blocking long."""
        for rec in self.records.values():
            await self._unwatch(rec)
            if rec.virtiofsd is not None:
                await rec.virtiofsd.stop()

    # -- guest side -------------------------------------------------------------

    async def _guest_mount(self, rec: MountRecord, keep_existing: bool = False) -> None:
        """Mount `rec` in the guest; `keep_existing`: a mount of it the
        guest still has is kept (see roost_guest.mounts.keep_existing)."""
        params: dict[str, Any] = {"mountPoint": rec.mount_point, "readonly": not rec.writable}
        if keep_existing:
            params["keepExisting"] = True
        token = ""
        if rec.type == "reverse-sshfs":
            token = self.sftp.grant(rec.location, rec.writable, rec.mount_point)
            params.update(fstype="reverse-sshfs", remotePath=SHARE_IN_ROOT, token=token,
                          cache=rec.options.get("cache", True),
                          followSymlinks=rec.options.get("followSymlinks", False))
        else:
            params.update(fstype=rec.type, tag=rec.tag,
                          **{k: v for k, v in rec.options.items() if v is not None})
        try:
            client = await self.opener()
            answer = await client.request("mount", timeout=MOUNT_TIMEOUT, **params)
            if "attempts" in answer:
                log.info("the guest mounted %s after %s attempts in %ss", rec.mount_point,
                         answer["attempts"], answer.get("seconds"))
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
            rec = self._new_record(location, mount_point, kind, writable)
            undo: list[Callable[[], Awaitable[None]]] = []
            loop = asyncio.get_running_loop()
            began = loop.time()
            plugged = began
            try:
                if kind == "virtiofs":
                    rec.slot = self._free_slot()
                    await self._plug(rec)
                    undo.append(lambda: self._unplug(rec))
                    plugged = loop.time()
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
            self._save()
            self.on_change()
            done = loop.time()
            log.info("%s mounted at %s in %.3fs (%s: %.3fs, the guest's mount: %.3fs)",
                     location, mount_point, done - began,
                     "virtiofsd and device" if kind == "virtiofs" else "no device",
                     plugged - began, done - plugged)
            return rec.to_json()

    def _new_record(self, location: str, mount_point: str, kind: str,
                    writable: bool) -> MountRecord:
        """A runtime mount's record, with the next tag and device id."""
        self._counter += 1
        self._save()  # a successor must not hand out this number again
        return MountRecord(location=location, mount_point=mount_point, type=kind,
                           writable=writable, ephemeral=True,
                           tag=f"roost-hot{self._counter}", device_id=f"hot{self._counter}")

    def _free_slot(self) -> str:
        slots = self._require_hotplug().hotplug_slots()
        used = {r.slot for r in self.records.values()}
        free = [s for s in slots if s not in used]
        if not free:
            raise UsageError(f"all {len(slots)} hot-plug slots are in use; "
                             "remove a mount first (roost mount remove)")
        return free[0]

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

    async def reattach_static(self, mount_in_guest: bool,
                              all_static: bool = False) -> list[str]:
        """roost.yaml's shares back after detach_all(): each virtiofs device
        plugged again, and mounted in the guest unless `mount_static()` will
        do that (after a resume, as after a boot); the errors. `all_static`:
        after a detach_all() whose host agent died, which shares it took out
        is not known: each is put back unless the guest still has it."""
        errors = []
        for rec in self.records.values():
            if rec.ephemeral or not (rec.detached or all_static):
                continue
            try:
                if rec.type == "virtiofs" and rec.virtiofsd is None:
                    await self._plug(rec)
                rec.detached = False
                if mount_in_guest:
                    await self._guest_mount(rec, keep_existing=all_static)
            except RoostError as e:
                rec.error = str(e)
                errors.append(f"{rec.mount_point}: {e}")
        return errors

    async def remove(self, mount_point: str, force: bool = False) -> dict[str, Any]:
        """Unmount a runtime mount in the guest and detach its device. With
        `force`, or when its daemon died (its I/O would hang), the guest aborts
        the share's FUSE connection first: pending and later I/O fails."""
        mount_point = os.path.normpath(mount_point)
        async with self._lock:
            rec = self.records.get(mount_point)
            if rec is None:
                raise UsageError(f"nothing is mounted at {mount_point} "
                                 "(see roost mount list)")
            if not rec.ephemeral:
                raise UsageError(f"{mount_point} comes from roost.yaml; remove it there and "
                                 "restart the instance")
            rec.removing = True
            force = force or bool(rec.error)
            try:
                if force and rec.type == "virtiofs":
                    await self._unplug_dead_virtiofs(rec)
                    await self._guest_umount(rec, force=True)
                else:
                    await self._guest_umount(rec, force=force)
                    await self._unplug(rec)
            except BaseException:
                rec.removing = False
                if rec.virtiofsd is not None and rec.watcher is None and not rec.error:
                    self._watch(rec)  # still serving: still watched
                raise
            del self.records[mount_point]
            self._save()
            self.on_change()
            return rec.to_json()
