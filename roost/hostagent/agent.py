"""The host agent of one instance: New, then Run, then cleanups in reverse.

New loads the config, allocates the SSH port, writes the cidata ISO and
ssh.config, and creates the driver. Run starts the driver, serves ha.sock,
waits for the readiness requirements, then blocks until a signal or the
VM's exit; every cleanup registered on the way then runs, newest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from roost import __version__
from roost.cidata import GuestIdentity, files_for, write_iso
from roost.config.loader import Config, load_config
from roost.driver.base import (
    Driver,
    FileSystemHotplug,
    Suspendable,
    VMDescription,
    VMSnapshots,
    mac_address,
)
from roost.driver.factory import create_driver
from roost.errors import RoostError, UsageError
from roost.hostagent import readiness
from roost.hostagent.cleanup import CleanupError, CleanupStack
from roost.hostagent.copytohost import copy_to_host
from roost.hostagent.events import EventEmitter, rfc3339_now
from roost.hostagent.guestagent import GuestAgentClient, GuestAgentError
from roost.hostagent.mounts.manager import (
    MountManager,
    boot_shares,
    default_mount_type,
    static_records,
)
from roost.hostagent.mounts.sftp import serve_sftp
from roost.hostagent.portfwd.forward import SSHForward, UnixForward
from roost.hostagent.portfwd.manager import PortForwarder, follow_guest_agent
from roost.hostagent.portfwd.rules import HostAddr, Listener
from roost.hostagent.readiness import SSH_COMMAND_TIMEOUT
from roost.hostagent.requirements import NotReady, Requirement, Result, wait_for
from roost.image.disk import read_pinned
from roost.sshutil.config import control_argv, guest_user, host_timezone, ssh_argv, write_ssh_files
from roost.sshutil.keys import ensure_host_key, ensure_user_key
from roost.store import snapshots
from roost.store.instance import Instance, write_atomic
from roost.store.paths import config_dir
from roost.store.snapshots import check_tag
from roost_guest.ports import PROC_TABLES, parse_proc_table

if TYPE_CHECKING:
    from roost.hostagent.api import ApiServer
    from roost.hostagent.main import Restore

log = logging.getLogger("roost.hostagent")

SSH_FALLBACK_AFTER = 10.0  # seconds without the guest agent before SSH forwarding
SSH_POLL_SECONDS = 1.0


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


class HostAgentError(RoostError):
    pass


def _import_api_server() -> type[ApiServer]:
    from roost.hostagent.api import ApiServer

    return ApiServer


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_ssh(inst: Instance, command: list[str], timeout: float) -> tuple[int, str]:
    """Run a command in the guest through the ControlMaster; (status, output)."""
    proc = await asyncio.create_subprocess_exec(
        *ssh_argv(inst, command), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace").strip()


class HostAgent:
    def __init__(self, inst: Instance, events: EventEmitter) -> None:
        self.inst = inst
        self.events = events
        self.cleanups = CleanupStack()
        self.config: Config
        self.driver: Driver
        self.ssh_port = 0
        self.instance_id = ""
        self.guest_agent: GuestAgentClient | None = None
        self.attach_pid: int | None = None
        self.resume_state: dict[str, Any] | None = None
        self._prestarted = False  # QEMU already started (loading a saved state)
        self._suspended = False
        self.mount_errors = False
        self.copy_errors: list[str] = []
        self.guest_health: dict[str, Any] = {}
        self._guest_agent_lock = asyncio.Lock()
        self.results: list[Result] = []
        self.started_at = rfc3339_now()
        self._stop = asyncio.Event()
        self._forced = False
        self.forwarder: PortForwarder | None = None
        self.mounts: MountManager
        self.socket_forwards: list[dict[str, Any]] = []
        self.config_digest = ""
        self._early_wake: asyncio.Future[GuestAgentClient] | None = None
        # What `roost ls` shows: starting until readiness is decided, then
        # running or degraded, with what failed.
        self.ready_state = "starting"
        self.degraded_by: list[str] = []
        self._woken_early = False

    # -- New ------------------------------------------------------------------

    def new(self, restore: Restore | None = None) -> None:
        """Everything before the VM starts; `restore` is a QEMU already
        loading this instance's saved state (see roost.hostagent.main)."""
        inst = self.inst
        self.config_digest = inst.config_digest()
        self.config = load_config(inst.config)
        # A VM whose host agent died keeps running; take it over as it is.
        self.attach_pid = None if restore else inst.qemu_pid_alive()
        runtime = inst.read_runtime() if self.attach_pid else {}
        if restore is not None:
            self.resume_state = runtime = restore.saved
        elif not self.attach_pid and inst.suspended.exists():
            # Resume: the same machine as when it was saved, state loaded.
            self.resume_state = runtime = json.loads(inst.suspended.read_text())
        if self.attach_pid and not runtime.get("instanceId"):
            raise HostAgentError(f"QEMU (pid {self.attach_pid}) runs but {inst.runtime} is "
                                 f"missing; run `roost stop {inst.name}` and start again")
        self.ssh_port = int(runtime.get("sshLocalPort") or 0) or (
            self.config.ssh.local_port or free_port())
        self.instance_id = str(runtime.get("instanceId") or f"i-{uuid.uuid4().hex[:12]}")
        self.started_at = str(runtime.get("startedAt") or self.started_at)
        user, uid = guest_user()
        identity, user_pub = ensure_user_key(config_dir())
        host_priv, host_pub = ensure_host_key(inst.host_key, inst.name)
        ident = GuestIdentity(
            instance_id=self.instance_id, hostname=inst.name, user=user, uid=uid,
            authorized_keys=[user_pub], host_private_key=host_priv, host_public_key=host_pub,
            cloud_instance_id=inst.cloud_instance_id(), mac=mac_address(inst.name),
            provision=list(self.config.provision),
            allow_exec=self.config.guest_agent.allow_exec,
            health_checks=[c.guest_json() for c in self.config.health_checks],
            busy_threshold=self.config.worker.busy_threshold,
            sample_secs=self.config.worker.sample_secs,
            env=dict(self.config.env), timezone=self.config.timezone or host_timezone(),
        )
        if not self.attach_pid and not self.resume_state:  # the guest has this ISO
            write_iso(inst.cidata, files_for(ident))
        write_ssh_files(inst, self.ssh_port, user, identity, host_pub)
        static_mounts = static_records(self.config, inst.dir)
        for rec in static_mounts if self.resume_state is not None else []:
            rec.detached = True  # the saved VM has them unmounted (MountManager.detach_all)
        # A restored VM is the machine it was saved from, whatever roost.yaml says now.
        self.driver = restore.driver if restore else create_driver(VMDescription(
            inst=inst, config=self.config, image=read_pinned(inst), ssh_port=self.ssh_port,
            shares=boot_shares(static_mounts, inst.dir), restore=self.resume_state is not None))
        self._prestarted = restore is not None
        self._early_wake = restore.woken if restore else None
        self._woken_early = self._early_wake is not None
        hotplug = self.driver if isinstance(self.driver, FileSystemHotplug) else None
        self.mounts = MountManager(inst.dir, hotplug, self._guest_agent, static_mounts,
                                   default_mount_type(self.config),
                                   tuple(self.config.mount_types_unsupported))

    def _stop_now(self) -> None:
        self._forced = True
        self._stop.set()

    # -- Run ------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        # SIGUSR1: stop now, without the guest's ACPI shutdown (roost stop --force).
        loop.add_signal_handler(signal.SIGUSR1, self._stop_now)
        exit_code = 0
        try:
            exit_code = await self._run()
        except Exception as e:
            log.exception("host agent failed")
            self.events.add_error(str(e))
            exit_code = 1
        finally:
            self.events.emit(running=False, exiting=True, phase="stopping")
            try:
                await self.cleanups.run()
            except CleanupError as e:
                for err in e.errors:
                    self.events.add_error(f"cleanup: {err}")
                exit_code = exit_code or 1
            self.events.emit(exiting=True, phase="stopped")
        return exit_code

    async def _run(self) -> int:
        inst = self.inst
        self.cleanups.push("remove runtime files", self._remove_runtime_files)
        # After the VM has stopped: its RAM file, unless suspend keeps it.
        self.cleanups.push("remove the RAM file", self._discard_ram)
        # Pushed before the VM starts, so it runs after the VM has stopped.
        self.cleanups.push("stop virtiofsd processes", self.mounts.stop_daemons)
        if self.attach_pid:
            self.events.emit(phase="reattaching", sshLocalPort=self.ssh_port,
                             instanceId=self.instance_id)
            await self.driver.attach(self.attach_pid)
            self.mounts.adopt_static_daemons()
        elif not self._prestarted:
            await self.mounts.start_static_daemons()
            self.events.emit(phase="booting", sshLocalPort=self.ssh_port,
                             instanceId=self.instance_id)
            await self.driver.start()
        self.cleanups.push("stop the VM", lambda: self.driver.stop(
            graceful=not (self._forced or self._suspended)))
        woken: asyncio.Future[None] | None = None
        if self.resume_state is not None:
            await self._run_restored()
            woken = asyncio.ensure_future(self._wake())
        self.cleanups.push("close the SSH master", self._close_ssh_master)
        self._write_runtime()

        # Readiness runs beside the API's start-up (aiohttp's import alone is
        # ~0.15 s here), but Running is announced only once ha.sock serves.
        api_up = asyncio.Event()
        ready = asyncio.ensure_future(self._become_ready(api_up, woken))
        ready.add_done_callback(self._readiness_failed)
        vm_exit = asyncio.ensure_future(self.driver.wait())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await self._start_api()
            api_up.set()
            await asyncio.wait({vm_exit, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (ready, woken):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
            stop.cancel()
        if not ready.cancelled() and ready.done() and ready.exception() is not None:
            return 1
        if vm_exit.done() and not self._stop.is_set():
            status = vm_exit.result()
            msg = f"the VM process (QEMU) exited unexpectedly with status {status}"
            if status is None:
                msg = "the VM process (QEMU) exited unexpectedly"
            elif status < 0:
                msg = f"the VM process (QEMU) was killed by signal {-status}"
            self.events.add_error(msg + f"; see {inst.qemu_log} and {inst.serial_log}")
            return 1
        vm_exit.cancel()
        return 0

    async def _start_api(self) -> None:
        api_server = await asyncio.to_thread(_import_api_server)  # the loop goes on meanwhile
        api = api_server(self.info, self.events.snapshot, self.mounts, self)
        await api.start(self.inst.ha_sock)
        self.cleanups.push("close ha.sock", lambda: api.close(self.inst.ha_sock))

    def _readiness_failed(self, task: asyncio.Future[None]) -> None:
        """A readiness step that crashed ends the host agent, loudly."""
        if not task.cancelled() and task.exception() is not None:
            log.error("readiness failed", exc_info=task.exception())
            self.events.add_error(f"readiness failed: {task.exception()}")
            self._stop.set()

    def _write_runtime(self) -> None:
        info = self.driver.info()
        write_atomic(self.inst.runtime, json.dumps({
            "hostagentPid": os.getpid(), "qemuPid": info.pid, "sshLocalPort": self.ssh_port,
            "accel": info.accel, "instanceId": self.instance_id, "startedAt": self.started_at,
            "portForwards": self.port_forwards(),
            "health": self.guest_health.get("summary", "-"),
            "state": self.ready_state, "degradedBy": self.degraded_by,
        }) + "\n")

    def port_forwards(self) -> list[dict[str, Any]]:
        dynamic = self.forwarder.active() if self.forwarder is not None else []
        return [*self.socket_forwards, *dynamic]

    def _discard_ram(self) -> None:
        if not self._suspended and isinstance(self.driver, Suspendable):
            self.driver.discard_ram_file()

    def _remove_runtime_files(self) -> None:
        self.inst.runtime.unlink(missing_ok=True)

    async def _close_ssh_master(self) -> None:
        if not self.inst.ssh_sock.exists():
            return
        proc = await asyncio.create_subprocess_exec(
            *control_argv(self.inst, "exit"), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        self.inst.ssh_sock.unlink(missing_ok=True)

    def info(self) -> dict[str, Any]:
        d = self.driver.info()
        return {
            "name": self.inst.name, "dir": str(self.inst.dir), "version": __version__,
            "instanceId": self.instance_id, "startedAt": self.started_at,
            "hostagentPid": os.getpid(), "sshLocalPort": self.ssh_port,
            "driver": {"name": d.name, "accel": d.accel, "pid": d.pid,
                       "sshAddress": f"{d.ssh.host}:{d.ssh.port}",
                       "guestAgent": d.guest_agent, "capabilities": d.capabilities},
            "requirements": [r.to_json() for r in self.results],
            "portForwards": self.port_forwards(),
            "portForwardsFailed": self.forwarder.failed() if self.forwarder else [],
            "mounts": self.mounts.listing(),
            "status": self.events.snapshot(),
        }

    # -- readiness ------------------------------------------------------------

    def requirements(self, resumed: bool = False
                     ) -> tuple[list[Requirement], list[Requirement], list[Requirement]]:
        async def ping_agent() -> None:
            try:
                client = await self._guest_agent()
                await client.request("ping", timeout=2.0)
            except GuestAgentError as e:
                await self._drop_guest_agent()
                raise NotReady(str(e)) from None

        async def ssh(command: list[str], timeout: float) -> tuple[int, str]:
            return await run_ssh(self.inst, command, timeout)

        ctx = readiness.ReadinessContext(
            inst=self.inst, info=self.driver.info(), boot_id=self.instance_id,
            cloud_image=self.config.cloud_image(), run_ssh=ssh, ping_agent=ping_agent,
            emit=self.events.emit_transient)
        return readiness.requirements(ctx, resumed)

    async def _guest_agent(self) -> GuestAgentClient:
        """The one session with the guest agent, opened on first use.

        Serialized: a virtio-serial port takes one host connection at a time,
        and a second dial would wait unanswered behind the first.
        """
        async with self._guest_agent_lock:
            if self._early_wake is not None:
                early, self._early_wake = self._early_wake, None
                try:
                    self.guest_agent = await early
                except GuestAgentError as e:
                    self.events.add_error(f"the guest agent did not wake: {e}")
            if self.guest_agent is None or not self.guest_agent.connected:
                client = GuestAgentClient(self.driver.guest_agent_dialer())
                try:
                    await client.connect()
                except OSError as e:
                    raise GuestAgentError(f"cannot connect to the guest agent: {e}") from None
                self.guest_agent = client
            return self.guest_agent

    async def _drop_guest_agent(self) -> None:
        client, self.guest_agent = self.guest_agent, None
        if client is not None:
            await client.close()

    # -- port forwarding --------------------------------------------------------

    def _port_forward_event(self, event: dict[str, Any]) -> None:
        self.events.emit_transient(portForward=event)
        self._write_runtime()

    async def _start_port_forwarding(self) -> None:
        """Static socket forwards now; dynamic ones follow the guest agent."""
        opener = self._guest_agent
        for rule in self.config.port_forwards:
            if rule.guest_socket is None or rule.host_socket is None or rule.reverse:
                continue
            fwd = UnixForward(opener, rule.host_socket, rule.guest_socket)
            entry = {"protocol": "unix", "guestAddr": rule.guest_socket,
                     "hostAddr": rule.host_socket, "via": "agent"}
            try:
                await fwd.start()
            except OSError as e:
                self._port_forward_event({**entry, "type": "failed",
                                          "error": f"cannot listen on {rule.host_socket}: {e}"})
                continue
            self.cleanups.push(f"stop {fwd.description}", fwd.stop)
            self.socket_forwards.append(entry)
            self._port_forward_event({**entry, "type": "forwarding"})
        self.forwarder = PortForwarder(list(self.config.port_forwards), opener,
                                       self._port_forward_event)
        self.cleanups.push("stop port forwards", self.forwarder.close)
        task = asyncio.ensure_future(self._follow_ports(self.forwarder))
        self.cleanups.push("stop following guest ports", lambda: _cancel(task))

    async def _follow_ports(self, forwarder: PortForwarder) -> None:
        """Follow the guest agent's port events; without it, poll over SSH."""
        unreachable_since = time.monotonic()
        reverse = {r.guest_socket: r.host_socket for r in self.config.port_forwards
                   if r.reverse and r.guest_socket and r.host_socket}
        while True:
            try:
                await follow_guest_agent(forwarder, self._guest_agent, reverse,
                                         self._guest_stream, self._guest_event)
                unreachable_since = time.monotonic()
                log.info("guest agent session ended; reconnecting")
            except (GuestAgentError, OSError) as e:
                log.debug("guest agent unreachable: %s", e)
            await self._drop_guest_agent()
            if time.monotonic() - unreachable_since > SSH_FALLBACK_AFTER:
                await self._ssh_port_poll(forwarder)
            await asyncio.sleep(0.2)

    # -- suspend and resume -------------------------------------------------------

    async def suspend(self) -> dict[str, Any]:
        """Save the VM's state to vmstate.bin and end QEMU; `roost resume` loads it."""
        if not isinstance(self.driver, Suspendable):
            raise UsageError("this instance's driver cannot suspend")
        driver: Suspendable = self.driver
        try:
            client = await self._guest_agent()
            prep = await client.request("sleep-prep", timeout=120.0)
        except GuestAgentError as e:
            raise HostAgentError(f"the guest agent could not prepare for sleep: {e}") from None
        detached = [m["mountPoint"] for m in self.mounts.listing()]
        hot: list[dict[str, Any]] = []
        try:
            hot = await self.mounts.detach_all()  # shares block saving the VM state
            await self._drop_guest_agent()
            seconds = await driver.save_state(self.inst.vmstate)
        except RoostError:
            self.inst.vmstate.unlink(missing_ok=True)
            with contextlib.suppress(RoostError):
                await driver.continue_running()  # a failed migration may leave it paused
            for error in (await self.mounts.reattach_static(mount_in_guest=True)
                          + await self.mounts.readd(hot)):
                self.events.add_error(f"after the failed suspend: {error}")
            raise
        write_atomic(self.inst.suspended, json.dumps({
            **driver.machine_as_saved(self.inst.vmstate), "configDigest": self.config_digest,
            "sshLocalPort": self.ssh_port, "instanceId": self.instance_id,
            "startedAt": self.started_at, "suspendedAt": rfc3339_now(), "mounts": hot,
            "saveSeconds": round(seconds, 3),
        }) + "\n")
        self._suspended = True
        self.events.emit(phase="suspended")
        self._stop.set()  # the cleanups quit QEMU (its state is saved)
        return {"saveSeconds": round(seconds, 3), "checkpoints": prep.get("checkpoints", []),
                "detachedMounts": detached}

    async def _run_restored(self) -> None:
        """Once the saved state is loaded, the VM runs: the saved state is used up."""
        assert isinstance(self.driver, Suspendable)
        self.events.emit(phase="resuming")
        await self.driver.run_loaded()
        self.inst.drop_saved_state()

    async def _wake(self) -> None:
        """Wake the restored guest (restore_cmds, clock); put back its runtime mounts."""
        assert self.resume_state is not None
        try:
            client = await self._guest_agent()  # adopts the session that woke it early
            if not self._woken_early:
                await client.request("wake", timeout=60.0, time=time.time())
        except GuestAgentError as e:
            self.events.add_error(f"the guest agent did not wake: {e}")
        # roost.yaml's shares: devices now, guest mounts with mount_static() as after a boot.
        for error in (await self.mounts.reattach_static(mount_in_guest=False)
                      + await self.mounts.readd(self.resume_state.get("mounts", []))):
            self.events.add_error(f"after resume: {error}")

    def _vm_snapshots(self) -> VMSnapshots:
        if not isinstance(self.driver, VMSnapshots):
            raise UsageError("this instance's driver cannot snapshot a running VM; stop it first")
        return self.driver

    async def snapshot_create(self, tag: str) -> dict[str, Any]:
        check_tag(tag)
        if snapshots.find(self.inst, tag) is not None:
            raise UsageError(f"snapshot {tag!r} already exists")
        kind = await self._vm_snapshots().snapshot_save(tag)
        return {"tag": tag, "state": kind}

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
        await self._close_ssh_master()
        await self._drop_guest_agent()
        with contextlib.suppress(GuestAgentError):
            client = await self._guest_agent()
            await client.request("set-clock", time=time.time())
        await self._wait_ssh_again()
        return {"tag": tag, "applied": True}

    async def _wait_ssh_again(self) -> None:
        """The essential requirements again, as after boot."""
        essential, _, _ = self.requirements()
        for req in essential:
            result = await wait_for(req)
            if not result.ok:
                raise HostAgentError(f"after the restore: {result.error} "
                                     f"(hint: {req.debug_hint})")

    async def snapshot_delete(self, tag: str) -> dict[str, Any]:
        if snapshots.find(self.inst, check_tag(tag)) is None:
            raise UsageError(f"no snapshot {tag!r}")
        await self._vm_snapshots().snapshot_delete(tag)
        return {"tag": tag, "deleted": True}

    async def execute(self, argv: list[str], timeout: float
                      ) -> AsyncIterator[tuple[str, bytes | int]]:
        if not self.config.guest_agent.allow_exec:
            raise UsageError(
                f"exec is disabled for {self.inst.name}: it is a dev-only door into the "
                "guest; set guestAgent.allowExec: true in roost.yaml and restart to enable it")
        try:
            client = await self._guest_agent()
            async for item in client.execute(argv, timeout):
                yield item
        except GuestAgentError as e:
            raise HostAgentError(str(e)) from None

    def _guest_event(self, event: dict[str, Any]) -> None:
        """Health and worker changes, pushed by the guest agent, into our events."""
        kind = event.get("event")
        body = {k: v for k, v in event.items() if k != "event"}
        if kind == "health":
            self.guest_health = body
            self.events.emit(guestHealth={"summary": body.get("summary", "-"),
                                          "checks": body.get("checks", [])})
        elif kind == "worker":
            self.events.emit(worker={"state": body.get("state"),
                                     "lastBusyAt": body.get("lastBusyAt")})
        elif kind == "probes":
            self.events.emit_transient(probes=body.get("probes", []))
        else:
            return
        self._write_runtime()

    async def guest_request(self, kind: str) -> dict[str, Any]:
        try:
            client = await self._guest_agent()
        except GuestAgentError as e:
            raise HostAgentError(f"the guest agent does not answer: {e}") from None
        try:
            return await client.request(kind, timeout=120.0)
        except GuestAgentError as e:
            if not client.connected:
                raise HostAgentError(f"the guest agent does not answer: {e}") from None
            raise UsageError(str(e)) from None  # the guest refused this request

    async def _guest_stream(self, event: dict[str, Any], stream: Any) -> None:
        """Guest-initiated streams other than reverse forwards: reverse sshfs."""
        path = str(event.get("path", ""))
        if path.startswith("sftp:/"):
            await serve_sftp(stream, path[len("sftp:"):], bool(event.get("readonly")))
        else:
            await stream.reset(f"nothing on the host serves {path!r}")

    async def _ssh_port_poll(self, forwarder: PortForwarder) -> None:
        """One round of the fallback: guest listeners from /proc/net over SSH."""
        if forwarder.fallback is None:
            log.warning("guest agent unreachable; forwarding TCP ports over SSH")
            await forwarder.close()
            base = ssh_argv(self.inst, [])

            def ssh_forward(host: HostAddr, guest_host: str, guest_port: int) -> SSHForward:
                return SSHForward(base, host.ip, host.port, guest_host, guest_port)

            forwarder.fallback = ssh_forward
        tables = [t for t in PROC_TABLES if t[0] == "tcp"]
        script = "; ".join(f"cat {path}; echo @@" for _, path, _ in tables)
        status, out = await run_ssh(self.inst, ["sh", "-c", script], SSH_COMMAND_TIMEOUT)
        if status != 0:
            return
        listeners = []
        for (proto, _, state), text in zip(tables, out.split("@@"), strict=False):
            listeners += [Listener(*t) for t in parse_proc_table(proto, state, text.strip())]
        await forwarder.sync(listeners)
        await asyncio.sleep(SSH_POLL_SECONDS)

    async def _run_list(self, reqs: list[Requirement]) -> list[Result]:
        results = []
        for req in reqs:
            self.events.emit(phase=f"waiting: {req.description}")
            result = await wait_for(req)
            results.append(result)
            self.results.append(result)
            if not result.ok and req.kind == "essential":
                break
        return results

    async def _become_ready(self, api_up: asyncio.Event,
                            woken: asyncio.Future[None] | None) -> None:
        essential, optional, final = self.requirements(resumed=self.resume_state is not None)
        self.cleanups.push("disconnect the guest agent", self._drop_guest_agent)
        # The guest agent is independent of SSH: wait for both at once.
        optional_task = asyncio.ensure_future(self._run_list(optional))
        try:
            results = await self._run_list(essential)
            if all(r.ok for r in results):
                await self._start_port_forwarding()
                results += await self._run_list(final)
            results += await optional_task
            if woken is not None:
                await woken
            # Taken over, the VM kept running with roost.yaml's shares mounted.
            if all(r.ok for r in results if r.requirement.kind == "essential") \
                    and not self.attach_pid:
                self.events.emit(phase="mounting host folders")
                for error in await self.mounts.mount_static():
                    self.events.add_error(error)
                    self.mount_errors = True
            # Like Lima: after the final requirements, whatever they said.
            if self.config.copy_to_host and self.resume_state is None and not self.attach_pid \
                    and all(r.ok for r in results if r.requirement.kind == "essential"):
                self.events.emit(phase="copying files to the host")
                self.copy_errors = await copy_to_host(self.inst, list(self.config.copy_to_host),
                                                      self.cleanups.push)
                for error in self.copy_errors:
                    self.events.add_error(error)
        finally:
            optional_task.cancel()
        failed: list[Any] = [r for r in results if not r.ok]
        for r in failed:
            self.events.add_error(f"{r.error} (hint: {r.requirement.debug_hint})")
        agent = {"connected": self.guest_agent is not None and self.guest_agent.connected}
        self.degraded_by = [r.requirement.name for r in failed] + (
            ["mounts"] if self.mount_errors else []) + (
            ["copyToHost"] if self.copy_errors else [])
        self.ready_state = "degraded" if self.degraded_by else "running"
        self._write_runtime()
        await api_up.wait()
        self.events.emit(
            running=True, degraded=bool(self.degraded_by), phase="running",
            requirements=[r.to_json() for r in self.results], guestAgent=agent,
        )
