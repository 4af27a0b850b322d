"""The QEMU driver: one QEMU process per instance, controlled over QMP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from roost.driver.base import DiskError, DriverError, DriverInfo, Share, SSHAddress
from roost.driver.channel import Dialer, UnixDialer
from roost.driver.qemu import guestram
from roost.driver.qemu.cmdline import HOTPLUG_SLOTS, QemuSpec, build_argv
from roost.driver.qemu.machine import saved_entries, snapshot_entries
from roost.driver.qemu.sandbox import use_sandbox
from roost.store.durable import fsync_dir, fsync_path
from roost.store.sparse import copy_sparse

log = logging.getLogger(__name__)

QMP_CONNECT_SECONDS = 30.0
POWERDOWN_SECONDS = 30.0
QUIT_SECONDS = 5.0
# query-migrate states of a migration still under way.
MIGRATING = ("setup", "active", "device", "pre-switchover", "cancelling", "wait-unplug")
# The name under which QMP holds the descriptor of a VM state file (getfd).
STATE_FD_NAME = "vmstate"


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def _exit_status(proc: asyncio.subprocess.Process) -> int | None:
    return await proc.wait()


class QemuDriver:
    """Driver, with every optional capability: FileSystemHotplug, VMSnapshots,
    Suspendable and PausesOnFullDisk (see roost.driver.base)."""

    def __init__(self, spec: QemuSpec, log_path: Path) -> None:
        self.spec = spec
        self.log_path = log_path
        self._pid: int | None = None
        self._qmp: object | None = None  # qemu.qmp.QMPClient, imported lazily
        # QEMU's exit status; None when it was not our child (attached).
        self._exit: asyncio.Future[int | None] | None = None
        # The guest RAM: our memfd, QEMU's backend (guestram.py); None when
        # the RAM is a file (ram_file) or QEMU's own we could not reach.
        self._ram: int | None = None
        self._saved_image: Path | None = None  # the RAM the last save_state() wrote

    # -- Driver protocol ----------------------------------------------------

    def info(self) -> DriverInfo:
        return DriverInfo(
            name="qemu",
            accel=self.spec.accel,
            ssh=SSHAddress("127.0.0.1", self.spec.ssh_port),
            guest_agent=self.guest_agent_dialer().describe(),
            pid=self._pid,
            capabilities=["virtio-serial"],
        )

    def guest_agent_dialer(self) -> Dialer:
        return UnixDialer(str(self.spec.ga_sock), kind="virtio-serial")

    async def start(self) -> None:
        for p in (self.spec.qmp_sock, self.spec.ga_sock, self.spec.serial_sock,
                  self.spec.pidfile):
            p.unlink(missing_ok=True)
        if self.spec.ram_file is None:
            self._ram = guestram.create(self.spec.memory)
        filled = self._fill_ram()
        try:
            argv = build_argv(self.spec, await use_sandbox(self.spec.qemu, self.spec.name),
                              ram_fd=self._ram)
            if filled is not None:
                # Before QEMU runs: loading device state reads guest RAM
                # (virtio's rings), as would a reset.
                await filled
            log.info("starting %s", shlex.join(argv))  # as a shell takes it back
            with open(self.log_path, "ab") as logf:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=logf,
                    pass_fds=() if self._ram is None else (self._ram,),
                    # QEMU must not take our SIGINT/SIGTERM: we stop it in order.
                    start_new_session=True,
                )
        except BaseException:
            await self._settle(filled)
            self._release_ram()
            raise
        self._pid = proc.pid
        self._exit = asyncio.ensure_future(_exit_status(proc))
        try:
            await self._connect_qmp()
            if self.spec.incoming is not None:
                await self._load_state(self.spec.incoming)
            elif self.spec.loadvm is not None:
                started = time.monotonic()
                await self.snapshot_load(self.spec.loadvm)
                log.info("snapshot %s loaded in %.3fs", self.spec.loadvm,
                         time.monotonic() - started)
        except BaseException:
            await self._kill()
            raise

    def _fill_ram(self) -> asyncio.Future[None] | None:
        """A restore whose RAM was saved beside its state: our memfd filled
        with it, in a thread."""
        image, fd = self.spec.memory_image, self._ram
        if image is None or fd is None:
            return None

        # The thread's own descriptor: a cancelled start closes ours at once.
        own = os.dup(fd)

        def fill() -> None:
            try:
                copied = guestram.load(image, own, self.spec.memory)
            except (OSError, ValueError) as e:
                raise DriverError(f"cannot load the saved guest RAM: {e}") from None
            finally:
                os.close(own)
            log.info("guest RAM loaded: %d MiB", copied // 2**20)

        return asyncio.ensure_future(asyncio.to_thread(fill))

    @staticmethod
    async def _settle(task: asyncio.Future[None] | None) -> None:
        # A thread cannot be cancelled: it is let finish before its memfd closes.
        if task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(task)

    def _release_ram(self) -> None:
        fd, self._ram = self._ram, None
        if fd is not None:
            os.close(fd)

    async def _load_state(self, path: Path) -> None:
        await self._set_ignore_shared(self.spec.ram_file is not None
                                      or self.spec.memory_image is not None)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise DriverError(f"cannot read the saved VM state: {e}") from None
        await self._migrate_through_fd("migrate-incoming", fd)

    async def _migrate_through_fd(self, command: str, fd: int) -> None:
        """`migrate` or `migrate-incoming` through open file `fd` (ours: closed
        here). Passed over QMP (SCM_RIGHTS + getfd): the sandboxed QEMU
        cannot spawn the `exec:cat` that used to open the file."""
        qmp = self._require_qmp()
        try:
            qmp.send_fd_scm(fd)
            await self._qmp_execute("getfd", {"fdname": STATE_FD_NAME})
        finally:
            os.close(fd)  # QEMU holds its own copy now
        try:
            await self._qmp_execute(command, {"uri": f"fd:{STATE_FD_NAME}"})
        except DriverError:
            # Not taken by the migration: the descriptor is still QMP's.
            with contextlib.suppress(DriverError):
                await self._qmp_execute("closefd", {"fdname": STATE_FD_NAME})
            raise

    async def _set_ignore_shared(self, state: bool) -> None:
        # The guest RAM is saved apart (RAM file, memory image): only device
        # state moves. Off again after: a snapshot's savevm honours it too.
        await self._qmp_execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "x-ignore-shared", "state": state}]})

    async def attach(self, pid: int) -> None:
        """Take over a QEMU that a previous host agent started and lost.

        It is not our child, so its exit is watched through a pidfd.
        """
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise DriverError(f"QEMU (pid {pid}) is gone") from None
        exit_future: asyncio.Future[int | None] = loop.create_future()

        def exited() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            if not exit_future.done():
                exit_future.set_result(None)

        loop.add_reader(fd, exited)
        self._pid, self._exit = pid, exit_future
        if self.spec.ram_file is None:
            self._ram = guestram.find_in(pid)  # without it a suspend migrates the RAM
        try:
            await self._connect_qmp()
        except BaseException:
            await self._close_qmp()
            self._release_ram()
            raise

    async def wait(self) -> int | None:
        assert self._exit is not None, "driver not started"
        return await asyncio.shield(self._exit)

    async def stop(self, graceful: bool = True) -> None:
        if self._pid is None or self._exit is None or self._exit.done():
            await self._kill()
            return
        if graceful and await self._qmp_command("system_powerdown"):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exit), POWERDOWN_SECONDS)
        if not self._exit.done() and await self._qmp_command("quit"):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exit), QUIT_SECONDS)
        await self._kill()

    # -- file-system hot-plug capability -------------------------------------

    def hotplug_slots(self) -> tuple[str, ...]:
        return HOTPLUG_SLOTS

    async def hotplug_virtiofs(self, share: Share) -> None:
        """vhost-user-fs-pci on a spare root port, talking to a running virtiofsd."""
        if share.socket is None or share.slot is None:
            raise DriverError(f"virtiofs share {share.id} needs virtiofsd's socket and a slot")
        chardev = f"{share.id}-chr"
        await self._qmp_execute("chardev-add", {
            "id": chardev,
            "backend": {"type": "socket", "data": {
                "addr": {"type": "unix", "data": {"path": str(share.socket)}},
                "server": False}},
        })
        try:
            await self._qmp_execute("device_add", {
                "driver": "vhost-user-fs-pci", "id": share.id, "bus": share.slot,
                "chardev": chardev, "tag": share.tag, "queue-size": share.queue_size,
            })
        except BaseException:
            with contextlib.suppress(Exception):
                await self._qmp_execute("chardev-remove", {"id": chardev})
            raise

    async def unplug(self, device_id: str, timeout: float = 10.0) -> None:
        """device_del, wait for DEVICE_DELETED (ACPI: ~0.1 s), drop its chardev."""
        qmp = self._require_qmp()

        def is_ours(event: Any) -> bool:
            return bool(event.get("data", {}).get("device") == device_id)

        with qmp.listener("DEVICE_DELETED", is_ours) as listener:
            await self._qmp_execute("device_del", {"id": device_id})
            try:
                await asyncio.wait_for(listener.get(), timeout)
            except TimeoutError:
                raise DriverError(f"the guest did not release {device_id} in {timeout:g}s") \
                    from None
        with contextlib.suppress(DriverError):
            await self._qmp_execute("chardev-remove", {"id": f"{device_id}-chr"})

    # -- snapshots of the running VM ------------------------------------------

    async def _hmp(self, command: str) -> str:
        """An HMP command through QMP; HMP reports errors as output text."""
        out = await self._qmp_execute("human-monitor-command", {"command-line": command})
        return str(out or "").strip()

    async def snapshot_save(self, tag: str) -> str:
        """Save disk and VM state as internal qcow2 snapshot `tag`.

        Returns "vm" (resumable as it ran), or "disk" when a device blocks
        saving VM state (vhost-user-fs, a mounted 9p export): then only the
        disk is snapshotted, consistently, while the VM runs on.
        """
        # A snapshot holds the RAM, whatever a failed suspend left set.
        await self._set_ignore_shared(False)
        out = await self._hmp(f"savevm {tag}")
        if not out:
            return "vm"
        if "blocked" in out.lower() or "migrat" in out.lower():
            await self._qmp_execute("blockdev-snapshot-internal-sync",
                                    {"device": "root", "name": tag})
            return "disk"
        raise DriverError(f"savevm {tag}: {out}")

    async def snapshot_load(self, tag: str) -> None:
        await self._set_ignore_shared(False)
        out = await self._hmp(f"loadvm {tag}")
        if out:
            raise DriverError(f"loadvm {tag}: {out}")

    async def copy_disk(self, dest: Path) -> None:
        """Paused for the copy: `stop` drains QEMU's writes and flushes
        them, qcow2's cached tables too, so the file copied is whole."""
        running = (await self._qmp_execute("query-status")).get("status") == "running"
        if running:
            await self._qmp_execute("stop")
        try:
            await asyncio.to_thread(copy_sparse, self.spec.disk, dest)
        finally:
            if running:
                await self._qmp_execute("cont")

    async def snapshot_delete(self, tag: str) -> None:
        out = await self._hmp(f"delvm {tag}")
        if out:
            raise DriverError(f"delvm {tag}: {out}")

    # -- suspend and resume ---------------------------------------------------

    async def save_state(self, path: Path, timeout: float = 120.0) -> float:
        """Migrate the VM's device state into `path` and its RAM in use into
        the image beside it (guestram.py; into `path` too when the RAM is
        out of our reach), the VM left paused, and have them (and the RAM
        file of a VM an older roost suspended) on disk; seconds taken."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        self._saved_image = None
        ram_apart = self.spec.ram_file is not None or self._ram is not None
        await self._qmp_execute("migrate-set-parameters", {"max-bandwidth": 16 * 1024**3})
        await self._set_ignore_shared(ram_apart)
        try:
            # Paused first: the RAM is then saved as it stands, in one pass. A
            # live save (the guest running, its dirty pages sent again) under
            # multi-threaded TCG restored guests with a corrupted kernel.
            await self._qmp_execute("stop")
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise DriverError(f"cannot write the VM state: {e}") from None
            await self._migrate_through_fd("migrate", fd)
            await self._migration_done(start, timeout)
            # Paused now, so the guest dirties no more RAM: a saved state
            # counts once a power loss cannot tear it.
            if self._ram is not None:
                self._saved_image = await asyncio.to_thread(self._save_ram,
                                                            os.dup(self._ram), path)
            await asyncio.to_thread(self._sync_saved_state, path)
        except BaseException:
            if ram_apart:  # the VM may run on (continue_running() says so again)
                with contextlib.suppress(DriverError):
                    await self._migration_settled()  # a cancelled one refuses the change
                    await self._set_ignore_shared(False)
            raise
        return loop.time() - start

    async def _migration_done(self, start: float, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            info = await self._qmp_execute("query-migrate")
            status = info.get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise DriverError(f"saving the VM state failed: {info.get('error-desc', status)}")
            if loop.time() - start > timeout:
                await self._qmp_execute("migrate_cancel")
                raise DriverError(f"saving the VM state took over {timeout:g}s")
            await asyncio.sleep(0.01)

    async def _migration_settled(self, timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (await self._qmp_execute("query-migrate")).get("status") in MIGRATING \
                and loop.time() < deadline:
            await asyncio.sleep(0.05)

    def _save_ram(self, fd: int, state: Path) -> Path:
        """Guest RAM from `fd` (the thread's own: closed here) beside `state`."""
        image = guestram.image_for(state)
        try:
            written = guestram.save(fd, os.fstat(fd).st_size, image)
        except OSError as e:
            raise DriverError(f"cannot write the guest RAM: {e}") from None
        finally:
            os.close(fd)
        log.info("guest RAM saved: %d MiB in use", written // 2**20)
        return image

    def _sync_saved_state(self, state: Path) -> None:
        """The device state and the file-backed guest RAM it goes with, and
        their names in the instance directory, on disk."""
        files = [p for p in (state, self.spec.ram_file) if p is not None]
        try:
            for path in files:
                fsync_path(path)
            for directory in {p.parent for p in files}:
                fsync_dir(directory)
        except OSError as e:
            raise DriverError(f"cannot write the saved VM state to disk: {e}") from None

    def machine_at_snapshot(self, tag: str) -> dict[str, Any]:
        """The entries from which a machine is built to load snapshot `tag`."""
        return snapshot_entries(self.spec, tag)

    def machine_as_saved(self, state: Path) -> dict[str, Any]:
        """suspended.json's entries from which this machine is built again
        to load `state` (what save_state() wrote)."""
        return saved_entries(self.spec, state, self._saved_image)

    async def continue_running(self) -> None:
        # A save that failed after it completed left x-ignore-shared on.
        await self._set_ignore_shared(False)
        await self._qmp_execute("cont")

    async def resume_interrupted_save(self, timeout: float = 10.0) -> bool:
        status = (await self._qmp_execute("query-status")).get("status")
        if status == "running":
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (await self._qmp_execute("query-migrate")).get("status") in MIGRATING:
            if loop.time() > deadline:
                raise DriverError(f"the interrupted save did not stop in {timeout:g}s")
            await self._qmp_execute("migrate_cancel")
            await asyncio.sleep(0.05)
        log.warning("the VM was %s by a save its host agent never finished; it runs on",
                    status)
        await self._set_ignore_shared(False)  # the capability outlived that host agent
        await self._qmp_execute("cont")
        return True

    # -- disk errors ------------------------------------------------------------

    async def disk_errors(self) -> AsyncIterator[DiskError]:
        qmp = self._require_qmp()
        with qmp.listener("BLOCK_IO_ERROR") as listener:
            async for event in listener:
                data = event.get("data", {})
                yield DiskError(
                    device=str(data.get("device") or data.get("node-name") or "?"),
                    operation=str(data.get("operation", "?")),
                    nospace=bool(data.get("nospace", False)),
                    paused=data.get("action") == "stop",
                    reason=str(data.get("reason", "")))

    async def paused_on_disk_error(self) -> bool:
        return bool((await self._qmp_execute("query-status")).get("status") == "io-error")

    def discard_ram_file(self) -> None:
        if self.spec.ram_file is not None:
            self.spec.ram_file.unlink(missing_ok=True)

    async def run_loaded(self, timeout: float = 120.0) -> None:
        """After -incoming or loadvm (with -S): once the state is loaded, let the VM run."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status = (await self._qmp_execute("query-status")).get("status")
            # loadvm before the first `cont` leaves the VM where -S had it.
            loaded = ("paused", "postmigrate", *(("prelaunch",) if self.spec.loadvm else ()))
            if status in loaded:
                await self._set_ignore_shared(False)  # snapshots of it hold its RAM
                await self._qmp_execute("cont")
                if self.spec.loadvm:
                    await self._drop_loaded_snapshot(self.spec.loadvm)
                return
            if status == "running":
                return
            if status != "inmigrate" or loop.time() > deadline:
                info = await self._qmp_execute("query-migrate")
                raise DriverError(f"loading the saved VM state failed (the VM is {status}"
                                  f"): {info.get('error-desc', info.get('status', '?'))}")
            await asyncio.sleep(0.01)

    async def _drop_loaded_snapshot(self, tag: str) -> None:
        """A fork's disk came with its source's snapshot: loaded, it only
        takes space (and holds the source's identity)."""
        started = time.monotonic()
        try:
            await self.snapshot_delete(tag)
        except DriverError as e:
            log.warning("the fork's copy of snapshot %s stays on its disk: %s", tag, e)
        else:
            log.info("snapshot %s dropped in %.3fs", tag, time.monotonic() - started)

    async def reset(self) -> None:
        # -no-reboot makes a reset end the VM (a guest's `reboot` stops it),
        # and the firmware answers a reset with one of its own (SeaBIOS
        # resets the machine again to get its shadow RAM back): resets stay
        # resets until end_resets().
        await self._qmp_execute("set-action", {"reboot": "reset"})
        await self._qmp_execute("system_reset")

    async def end_resets(self) -> None:
        await self._qmp_execute("set-action", {"reboot": "shutdown"})

    async def quit(self) -> None:
        """End QEMU now (no guest shutdown): after its state was saved."""
        await self._qmp_command("quit")
        if self._exit is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exit), QUIT_SECONDS)
        await self._kill()

    # -- QMP ------------------------------------------------------------------

    def _require_qmp(self) -> Any:
        if self._qmp is None:
            raise DriverError("QEMU is not controllable (no QMP connection)")
        return self._qmp

    async def _qmp_execute(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        from qemu.qmp import ExecuteError

        qmp = self._require_qmp()
        try:
            return await asyncio.wait_for(qmp.execute(cmd, args), 10.0)
        except ExecuteError as e:
            raise DriverError(f"QMP {cmd}: {e.error_class}: {e}") from None
        except TimeoutError:
            raise DriverError(f"QMP {cmd}: no answer in 10s") from None

    # -- internals ----------------------------------------------------------

    async def _connect_qmp(self) -> None:
        from qemu.qmp import QMPClient

        assert self._exit is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + QMP_CONNECT_SECONDS
        while not self.spec.qmp_sock.exists():
            if self._exit.done():
                raise DriverError(
                    f"QEMU exited with status {self._exit.result()} while starting:\n"
                    f"{_tail(self.log_path)}"
                )
            if loop.time() > deadline:
                raise DriverError(f"QEMU did not create {self.spec.qmp_sock} in time")
            await asyncio.sleep(0.01)
        # QEMU bind()s the socket before it listen()s: a connect in between
        # is refused. Retried while QEMU lives, to the deadline, with
        # qemu.qmp's per-attempt error log held back until the last try.
        name = f"roost-{self.spec.name}"
        qmp_log = logging.getLogger(f"qemu.qmp.protocol.{name}")
        while True:
            qmp = QMPClient(name)
            last_try = self._exit.done() or loop.time() >= deadline
            qmp_log.disabled = not last_try
            try:
                await qmp.connect(str(self.spec.qmp_sock))
                break
            except Exception as e:
                if not last_try:
                    await asyncio.sleep(0.02)
                    continue
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._exit), 1.0)
                if self._exit.done():
                    raise DriverError(
                        f"QEMU exited with status {self._exit.result()} while starting:\n"
                        f"{_tail(self.log_path)}"
                    ) from None
                raise DriverError(
                    f"cannot connect to QMP at {self.spec.qmp_sock}: {e}") from None
            finally:
                qmp_log.disabled = False
        self._qmp = qmp

    async def _qmp_command(self, cmd: str) -> bool:
        qmp = self._qmp
        if qmp is None:
            return False
        try:
            await asyncio.wait_for(qmp.execute(cmd), 5.0)  # type: ignore[attr-defined]
            return True
        except Exception as e:  # QMP gone: the caller falls back to the next step
            log.warning("QMP %s failed: %s", cmd, e)
            return False

    async def _close_qmp(self) -> None:
        qmp, self._qmp = self._qmp, None
        if qmp is not None:
            with contextlib.suppress(Exception):
                await qmp.disconnect()  # type: ignore[attr-defined]

    async def _kill(self) -> None:
        await self._close_qmp()
        if self._pid is None or self._exit is None:
            self._release_ram()
            return
        if not self._exit.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            await asyncio.shield(self._exit)
        self._release_ram()  # QEMU is gone: the guest's RAM goes with our descriptor
        self.spec.pidfile.unlink(missing_ok=True)
        for p in (self.spec.qmp_sock, self.spec.ga_sock, self.spec.serial_sock):
            p.unlink(missing_ok=True)
