"""A running VM's state saved and gone back to: suspend, resume, snapshots.

Around the driver's save and load the guest is prepared: `sleep-prep`
before a suspend and `wake` after the resume, every share out of the guest
while the state is saved (shares block saving it) and back in after, and
after a snapshot is applied a new SSH master, a new guest agent session and
the clock set to now. What the driver can do is asked with isinstance()
(Suspendable, VMSnapshots), so a driver without it says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from roost.driver.base import Driver, Suspendable, VMSnapshots
from roost.errors import RoostError, UsageError
from roost.hostagent.errors import HostAgentError
from roost.hostagent.events import EventEmitter, rfc3339_now
from roost.hostagent.guestagent import GuestAgentClient, GuestAgentError
from roost.hostagent.mounts.manager import MountManager
from roost.hostagent.session import GuestAgentSession
from roost.hostagent.sshmaster import close_ssh_master
from roost.store import snapshots
from roost.store.durable import write_atomic
from roost.store.instance import Instance
from roost.store.snapshots import check_tag

SLEEP_PREP_TIMEOUT = 120.0
WAKE_TIMEOUT = 60.0

P = ParamSpec("P")
R = TypeVar("R")


def _exclusive(method: Callable[Concatenate[Checkpoints, P], Coroutine[Any, Any, R]]
               ) -> Callable[Concatenate[Checkpoints, P], Coroutine[Any, Any, R]]:
    """One at a time: each pauses, saves or copies the VM, and one in the
    middle of another would resume a VM the other is saving or copying (a
    suspend's RAM then older than its disk, a torn copy for a fork)."""
    @functools.wraps(method)
    async def run(self: Checkpoints, /, *args: P.args, **kwargs: P.kwargs) -> R:
        async with self._busy:
            return await method(self, *args, **kwargs)
    return run


class Checkpoints:
    def __init__(self, inst: Instance, driver: Driver, session: GuestAgentSession,
                 mounts: MountManager, events: EventEmitter, *,
                 identity: dict[str, Any], stop: Callable[[], None],
                 wait_ssh: Callable[[], Awaitable[None]],
                 fork_identity: dict[str, Any] | None = None,
                 dns_moved: bool = False) -> None:
        self.inst = inst
        self.driver = driver
        self.session = session
        self.mounts = mounts
        self.events = events
        self._identity = identity  # what the next host agent takes on: ports, ids, times
        self._stop = stop  # ends the host agent (its cleanups quit the VM)
        self._wait_ssh = wait_ssh  # SSH answers again, as after a boot
        self.suspended = False  # the VM's state is saved: no guest shutdown, RAM file kept
        self._fork_identity = fork_identity  # a fork's own, given to its guest on wake
        # hostResolver (identity's dnsPort) is not at the port the restored or
        # taken-over guest had (a fork's source holds that one): it is told.
        self._dns_moved = dns_moved
        self._busy = asyncio.Lock()  # see _exclusive

    # -- suspend and resume -------------------------------------------------------

    @_exclusive
    async def suspend(self) -> dict[str, Any]:
        """Save the VM's state (vmstate.bin, its RAM beside it in vmstate.ram)
        and end the VM; `roost resume` loads it."""
        if not isinstance(self.driver, Suspendable):
            raise UsageError("this instance's driver cannot suspend")
        driver: Suspendable = self.driver
        try:
            client = await self.session.open()
            prep = await client.request("sleep-prep", timeout=SLEEP_PREP_TIMEOUT)
        except GuestAgentError as e:
            raise HostAgentError(f"the guest agent could not prepare for sleep: {e}") from None
        detached = [m["mountPoint"] for m in self.mounts.listing()]
        hot: list[dict[str, Any]] = []
        try:
            hot = await self.mounts.detach_all()  # shares block saving the VM state
            await self.session.drop()
            seconds = await driver.save_state(self.inst.vmstate)  # on disk when it returns
            # Durable too (write_atomic fsyncs): "suspended" is said only after.
            self._write_suspended(driver, hot, seconds)
        except (RoostError, OSError) as e:
            self.inst.drop_saved_state()
            with contextlib.suppress(RoostError):
                await driver.continue_running()  # a failed migration may leave it paused
            for error in (await self.mounts.reattach_static(mount_in_guest=True)
                          + await self.mounts.readd(hot)):
                self.events.add_error(f"after the failed suspend: {error}")
            if isinstance(e, OSError):
                raise HostAgentError(f"cannot write {self.inst.suspended}: {e}; the VM "
                                     "runs on, not suspended") from None
            raise
        self.suspended = True
        self.events.emit(phase="suspended")
        self._stop()
        return {"saveSeconds": round(seconds, 3), "checkpoints": prep.get("checkpoints", []),
                "detachedMounts": detached}

    def _write_suspended(self, driver: Suspendable, hot: list[dict[str, Any]],
                         seconds: float) -> None:
        write_atomic(self.inst.suspended, json.dumps({
            **driver.machine_as_saved(self.inst.vmstate), **self._identity,
            "suspendedAt": rfc3339_now(), "mounts": hot, "saveSeconds": round(seconds, 3),
        }) + "\n")

    async def run_restored(self) -> None:
        """Once the saved state is loaded, the VM runs: the saved state is used up."""
        assert isinstance(self.driver, Suspendable), "only a Suspendable driver was restored"
        self.events.emit(phase="resuming")
        await self.driver.run_loaded()
        self.inst.drop_saved_state()

    async def wake(self, saved: dict[str, Any]) -> None:
        """Wake the restored guest (restore_cmds, clock); put back its shares.
        `saved` is the suspended.json it was restored from."""
        try:
            client = await self.session.open()  # adopts the session that woke it early
            if not self.session.woken_early:
                await client.request("wake", timeout=WAKE_TIMEOUT, time=time.time())
        except GuestAgentError as e:
            self.events.add_error(f"the guest agent did not wake: {e}")
        else:
            if self._fork_identity is not None:
                await self._reidentify(client)
            await self.move_dns(client)
        # roost.yaml's shares: devices now, guest mounts with mount_static() as after a boot.
        for error in (await self.mounts.reattach_static(mount_in_guest=False)
                      + await self.mounts.readd(saved.get("mounts", []))):
            self.events.add_error(f"after resume: {error}")

    @property
    def forked(self) -> bool:
        """A fork's first start: its guest is re-identified on wake."""
        return self._fork_identity is not None

    async def _reidentify(self, client: GuestAgentClient) -> None:
        """A fork's guest woke as its source: its host name, SSH host key and
        MAC become the fork's before anything uses them (SSH pins the new key)."""
        assert self._fork_identity is not None
        try:
            done = await client.request("reidentify", timeout=WAKE_TIMEOUT,
                                        **self._fork_identity)
        except GuestAgentError as e:
            self.events.add_error(f"the fork's guest kept its source's identity: {e}")
            return
        # The guest's words, bounded before they reach our events.
        problems = done.get("problems")
        for problem in problems[:10] if isinstance(problems, list) else []:
            self.events.add_error(f"giving the fork its identity: {str(problem)[:300]}")
        self.events.emit_transient(reidentified={k: str(done.get(k) or "")[:100]
                                                 for k in ("hostname", "ssh", "mac")})

    async def move_dns(self, client: GuestAgentClient | None = None) -> None:
        """If the guest had another resolver port than this host agent's
        (restored or taken over), it is told of ours."""
        if self._dns_moved:
            await self._point_dns(client)

    async def _point_dns(self, client: GuestAgentClient | None = None) -> None:
        """The guest's DNS redirect (or relay) pointed at this host agent's
        resolver port."""
        port = int(self._identity.get("dnsPort") or 0)
        try:
            client = client or await self.session.open()
            done = await client.request("dns-port", timeout=WAKE_TIMEOUT, port=port)
        except GuestAgentError as e:
            self.events.add_error(f"the guest's DNS still goes to the port it had, "
                                  f"not {port}: {e}")
            return
        self.events.emit_transient(dnsMoved=str(done.get("dns") or "")[:100])

    # -- snapshots of the running VM ------------------------------------------------

    def _vm_snapshots(self) -> VMSnapshots:
        if not isinstance(self.driver, VMSnapshots):
            raise UsageError("this instance's driver cannot snapshot a running VM; stop it first")
        return self.driver

    @_exclusive
    async def snapshot_create(self, tag: str) -> dict[str, Any]:
        check_tag(tag)
        if snapshots.find(self.inst, tag) is not None:
            raise UsageError(f"snapshot {tag!r} already exists")
        driver = self._vm_snapshots()
        kind = await driver.snapshot_save(tag)
        record = self.inst.snapshot_machine(tag)
        if kind == "vm":  # for a fork from it (roost.ops.fork)
            record.parent.mkdir(exist_ok=True)
            write_atomic(record, json.dumps({
                "dir": str(self.inst.dir), "dnsPort": self._identity.get("dnsPort", 0),
                # A fork loads it only on this machine: roost.yaml unchanged since.
                "configDigest": self._identity.get("configDigest", ""),
                **driver.machine_at_snapshot(tag)}))
        else:
            record.unlink(missing_ok=True)  # a deleted one's, of the same tag
        return {"tag": tag, "state": kind}

    @_exclusive
    async def snapshot_apply(self, tag: str) -> dict[str, Any]:
        snap = snapshots.find(self.inst, check_tag(tag))
        if snap is None:
            raise UsageError(f"no snapshot {tag!r}")
        if not snap["vmStateSize"]:
            raise UsageError(f"snapshot {tag!r} holds the disk only; stop the instance "
                             "to apply it")
        await self._vm_snapshots().snapshot_load(tag)
        # The guest is back at the snapshot: its TCP state no longer matches
        # the SSH master's, so a new master; a fresh guest agent session (its
        # hello resets the guest's side); the wall clock set to now.
        await close_ssh_master(self.inst)
        await self.session.drop()
        with contextlib.suppress(GuestAgentError):
            client = await self.session.open()
            await client.request("set-clock", time=time.time())
            # A snapshot of an earlier run names that run's resolver port.
            port = int(self._identity.get("dnsPort") or 0)
            if port and self._recorded(tag).get("dnsPort") != port:
                await self._point_dns(client)
        await self._wait_ssh()
        return {"tag": tag, "applied": True}

    def _recorded(self, tag: str) -> dict[str, Any]:
        """snapshot_create's record of the machine (none for an older roost's)."""
        try:
            record = json.loads(self.inst.snapshot_machine(tag).read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    @_exclusive
    async def snapshot_delete(self, tag: str) -> dict[str, Any]:
        if snapshots.find(self.inst, check_tag(tag)) is None:
            raise UsageError(f"no snapshot {tag!r}")
        await self._vm_snapshots().snapshot_delete(tag)
        self.inst.snapshot_machine(tag).unlink(missing_ok=True)
        return {"tag": tag, "deleted": True}

    @_exclusive
    async def copy_disk(self, dest: str) -> dict[str, Any]:
        """A whole copy of the running VM's disk, its snapshots too, at
        `dest` (a new file): the VM is paused for it."""
        path = Path(dest)
        if not path.is_absolute() or not path.parent.is_dir():
            raise UsageError(f"{dest!r}: the copy's path must be absolute, in a directory "
                             "that exists")
        if path.exists() or path.is_symlink():
            raise UsageError(f"{dest!r} exists already; the copy is made as a new file")
        started = time.monotonic()
        await self._vm_snapshots().copy_disk(path)
        return {"path": dest, "seconds": round(time.monotonic() - started, 3)}
