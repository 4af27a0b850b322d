"""The host agent of one instance: New, then Run, then cleanups in reverse.

New loads the config, allocates the SSH port, writes the cidata ISO and
ssh.config, has the driver made from a VMDescription, and wires the pieces
together: the guest agent session (session.py), mounts (mounts/), port
forwarding (portfwd/orchestrator.py) and checkpoints (checkpoint.py). Run
starts the driver, serves ha.sock, waits for the readiness requirements
(readiness.py), then blocks until a signal or the VM's exit; every cleanup
registered on the way then runs, newest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import time
import uuid
from typing import TYPE_CHECKING, Any

from roost import __version__
from roost.cidata import GuestIdentity, files_for, write_iso
from roost.cidata.identity import HOST_ADDRESS
from roost.config import params
from roost.config.loader import Config, load_config
from roost.config.model import PortForward
from roost.driver.base import (
    DataDisk,
    Driver,
    DriverInfo,
    FileSystemHotplug,
    PausesOnFullDisk,
    Resettable,
    Suspendable,
    VMDescription,
    free_port,
    mac_address,
)
from roost.driver.factory import create_driver
from roost.errors import RoostError
from roost.hostagent import boothang, consolemark, readiness
from roost.hostagent.apisocket import LazyApiSocket, Serving
from roost.hostagent.boothang import BootHangWatch
from roost.hostagent.checkpoint import Checkpoints
from roost.hostagent.cleanup import CleanupError, CleanupStack
from roost.hostagent.copytohost import copy_to_host
from roost.hostagent.diskwatch import DiskWatch
from roost.hostagent.dns import DNSServer, Resolver
from roost.hostagent.errors import HostAgentError
from roost.hostagent.events import EventEmitter, rfc3339_now
from roost.hostagent.guestagent import GuestAgentError
from roost.hostagent.lifecycle import LifecyclePolicy
from roost.hostagent.mounts.manager import (
    MountManager,
    MountRecord,
    boot_shares,
    default_mount_type,
    static_records,
)
from roost.hostagent.mounts.state import MountStateError
from roost.hostagent.portfwd.orchestrator import PortForwarding
from roost.hostagent.requirements import (
    NotReady,
    Requirement,
    Result,
    start_deadline_from_env,
    wait_for,
)
from roost.hostagent.session import GuestAgentSession
from roost.hostagent.sshmaster import close_ssh_master, run_ssh
from roost.image.disk import read_pinned
from roost.sshutil.config import guest_user, host_timezone, write_ssh_files
from roost.sshutil.keys import ensure_host_key, ensure_user_key
from roost.store.disks import Disk
from roost.store.durable import write_atomic
from roost.store.instance import FORKED_FROM, Instance, pid_running
from roost.store.paths import config_dir

if TYPE_CHECKING:
    from roost.hostagent.api import ApiServer
    from roost.hostagent.egress import EgressProxy
    from roost.hostagent.main import Restore

log = logging.getLogger("roost.hostagent")
# How often the guest agent is asked whether sshd listens, until the banner
# arrives: a question over virtio-serial, not a connection slirp could park.
SSHD_POLL_INTERVAL = 0.05
RUNTIME_WRITE_DELAY = 0.1  # runtime.json: at most one write in this long


def end_left_qemu(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL a QEMU of this instance (the caller checked its command line)
    that no host agent controls, and wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while pid_running(pid):
        if time.monotonic() > deadline:
            raise HostAgentError(f"QEMU (pid {pid}) did not die of SIGKILL in {timeout:g}s")
        time.sleep(0.01)


def _import_api_server() -> type[ApiServer]:
    from roost.hostagent.api import ApiServer

    return ApiServer


class HostAgent:
    def __init__(self, inst: Instance, events: EventEmitter) -> None:
        self.inst = inst
        self.events = events
        self.cleanups = CleanupStack()
        self.config: Config
        self.driver: Driver
        self.ssh_port = 0
        self.instance_id = ""
        self.attach_pid: int | None = None
        self.resume_state: dict[str, Any] | None = None
        self._prestarted = False  # QEMU already started (loading a saved state)
        self.mount_errors = False
        self.copy_errors: list[str] = []
        self.results: list[Result] = []
        self.started_at = rfc3339_now()
        self._stop = asyncio.Event()
        self._forced = False
        self._runtime_write_due = False  # a runtime.json write is scheduled
        self._runtime_removed = False  # by the cleanup: no write after it
        self._runtime_written = -RUNTIME_WRITE_DELAY  # loop time of the last write
        self.config_digest = ""
        # The pieces New wires together.
        self.session: GuestAgentSession
        self.mounts: MountManager
        self.port_forwarding: PortForwarding
        self.checkpoints: Checkpoints
        self.disk_watch: DiskWatch | None = None
        # What `roost ls` shows: starting until readiness is decided, then
        # running or degraded, with what failed.
        self.ready_state = "starting"
        self.degraded_by: list[str] = []
        # `roost start --timeout`: readiness fits into what is left of it.
        self.start_deadline = start_deadline_from_env()

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
            self.resume_state = runtime = inst.read_suspended()
        if self.attach_pid and not runtime.get("instanceId"):
            # Its host agent died before the VM was usable (runtime.json is
            # written once it is): nothing to take over, so boot afresh.
            log.warning("QEMU (pid %s) was left booting by a host agent that died; "
                        "stopping it to boot again", self.attach_pid)
            end_left_qemu(self.attach_pid)
            self.events.emit_transient(rebooted={
                "qemuPid": self.attach_pid,
                "reason": "its host agent died while the VM booted (no runtime.json)"})
            self.attach_pid = None
        self.ssh_port = int(runtime.get("sshLocalPort") or 0) or (
            self.config.ssh.local_port or free_port())
        self.instance_id = str(runtime.get("instanceId") or f"i-{uuid.uuid4().hex[:12]}")
        # hostResolver: bound now, for its port is in the seed. A resumed or
        # taken-over guest redirects DNS to the port it had: that one again
        # if it is free, else (a fork's source holds it) the guest is moved.
        had_dns_port = int(runtime.get("dnsPort") or 0)
        self.dns: DNSServer | None = None
        # Cut off from the internet, the guest cannot reach it either.
        if self.config.host_resolver.enabled and self.config.network.internet:
            self.dns = DNSServer(Resolver(HOST_ADDRESS, hosts=self.config.host_resolver.hosts,
                                          ipv6=self.config.host_resolver.ipv6))
            self.dns.bind(had_dns_port)
        self.started_at = str(runtime.get("startedAt") or self.started_at)
        user, uid = guest_user()
        identity, user_pub = ensure_user_key(config_dir())
        host_priv, host_pub = ensure_host_key(inst.host_key, inst.name)
        # A fork's saved guest has its source's seed: it gets its own, and on
        # wake its own identity (checkpoint.Checkpoints.reidentify).
        forked = bool(self.resume_state and self.resume_state.get(FORKED_FROM))
        new_seed = forked or (not self.attach_pid and not self.resume_state)
        ident = GuestIdentity(
            instance_id=self.instance_id, hostname=inst.name, user=user, uid=uid,
            authorized_keys=[user_pub], host_private_key=host_priv, host_public_key=host_pub,
            cloud_instance_id=inst.cloud_instance_id(), mac=mac_address(inst.name),
            provision=params.substitute(self.config.provision, self.config.param),
            allow_exec=self.config.guest_agent.allow_exec,
            allow_files=self.config.guest_agent.allow_files,
            health_checks=[c.guest_json() for c in self.config.health_checks],
            busy_threshold=self.config.worker.busy_threshold,
            sample_secs=self.config.worker.sample_secs,
            env=self._guest_env(), timezone=self.config.timezone or host_timezone(),
            # Read only for a new seed: a resume or takeover keeps the guest's.
            ca_certs=self._ca_certs() if new_seed else [],
            ca_remove_defaults=bool(self.config.ca_certs.remove_defaults),
            disks=[(d.name, d.format, d.fs_type) for d in self.config.additional_disks],
            dns_port=self.dns_port,
        )
        if new_seed:
            write_iso(inst.cidata, files_for(ident))
        write_ssh_files(inst, self.ssh_port, user, identity, host_pub,
                        forward_agent=self.config.ssh.forward_agent)
        static_mounts = static_records(self.config, inst.dir)
        for rec in static_mounts if self.resume_state is not None else []:
            rec.detached = True  # the saved VM has them unmounted (MountManager.detach_all)
        # A restored VM is the machine it was saved from, whatever roost.yaml says now.
        self.driver = restore.driver if restore else create_driver(VMDescription(
            inst=inst, config=self.config, image=read_pinned(inst), ssh_port=self.ssh_port,
            shares=boot_shares(static_mounts, inst.dir), disks=self._data_disks(),
            restore=self.resume_state is not None))
        self._prestarted = restore is not None
        self.session = GuestAgentSession(
            self.driver.guest_agent_dialer(), self.events, instance=inst.name,
            allow_exec=self.config.guest_agent.allow_exec,
            allow_files=self.config.guest_agent.allow_files, changed=self._runtime_changed,
            early=restore.woken if restore else None)
        hotplug = self.driver if isinstance(self.driver, FileSystemHotplug) else None
        self.mounts = MountManager(inst.dir, hotplug, self.session.open, static_mounts,
                                   default_mount_type(self.config),
                                   tuple(self.config.mount_types_unsupported))
        self.mounts.on_failure = self._mount_failed
        self.mounts.on_change = self._mounts_changed
        self.mounts.vm_running = self._vm_running
        if self.attach_pid:  # the runtime mounts the VM kept, as the dead host agent saved them
            try:
                self.mounts.restore_runtime()
            except MountStateError as e:
                self.events.add_error(f"{e}: the runtime mounts in the guest are not known; "
                                      f"`roost stop {inst.name}` and start again to be sure")
                self.mount_errors = True
        else:
            self.mounts.discard_saved()  # a VM of its own: none of its predecessor's mounts
        self.egress = self._egress_proxy()
        self.port_forwarding = PortForwarding(inst, self._port_forwards(),
                                              self.session, self.events, self._runtime_changed,
                                              self.mounts.sftp.serve_guest_stream,
                                              host_ssh_port=self.ssh_port or None,
                                              egress=self.egress.serve if self.egress else None)
        self.checkpoints = Checkpoints(
            inst, self.driver, self.session, self.mounts, self.events,
            identity={"configDigest": self.config_digest, "sshLocalPort": self.ssh_port,
                      "dnsPort": self.dns_port,
                      "instanceId": self.instance_id, "startedAt": self.started_at},
            stop=self._stop.set, wait_ssh=self._wait_ssh_again,
            fork_identity=self._fork_identity(ident) if forked else None,
            dns_moved=had_dns_port not in (0, self.dns_port))
        self.lifecycle = LifecyclePolicy(self.config.lifecycle, inst, self.events,
                                         suspend=self.checkpoints.suspend, stop=self._stop.set)

    def _fork_identity(self, ident: GuestIdentity) -> dict[str, Any]:
        """What a forked guest is told on wake: the fork's own host name, SSH
        host key (OpenSSH's and dropbear's format) and MAC address."""
        import base64

        from roost.sshutil.dropbear import dropbear_ed25519_key

        source = str(self.resume_state.get(FORKED_FROM)) if self.resume_state else ""
        return {"hostname": ident.hostname, "hostKey": ident.host_private_key,
                "hostKeyPublic": ident.host_public_key, "mac": ident.mac,
                "sourceMac": mac_address(source) if source else "",
                "dropbearKey": base64.b64encode(
                    dropbear_ed25519_key(ident.host_private_key)).decode()}

    @property
    def dns_port(self) -> int:
        """hostResolver's port on the host's loopback; 0: none."""
        return self.dns.port if self.dns else 0

    async def _finish_interrupted_suspend(self) -> None:
        """A VM taken over in the middle of a suspend (its host agent died
        saving it, before suspended.json): it runs on where it was, with
        roost.yaml's shares, which the save had taken out, put back."""
        if not isinstance(self.driver, Suspendable) or self.inst.suspended.exists():
            return
        if not await self.driver.resume_interrupted_save():
            return
        self.inst.drop_saved_state()  # never finished: no state to resume
        errors = await self.mounts.reattach_static(mount_in_guest=True, all_static=True)
        for error in errors:
            self.events.add_error(f"after the interrupted suspend: {error}")
        self.events.emit_transient(suspendInterrupted={
            "reason": "its host agent died while saving the VM; the VM runs on",
            "mountErrors": errors})

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
        except RoostError as e:  # a failure roost knows and explains: its message
            log.error("host agent failed: %s", e)
            self.events.add_error(str(e))
            exit_code = 1
        except Exception as e:  # a bug: where it happened too
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
        self.cleanups.push("forget runtime mounts", self._forget_runtime_mounts)
        # After the VM has stopped: its RAM file, unless suspend keeps it.
        self.cleanups.push("remove the RAM file", self._discard_ram)
        # Pushed before the VM starts, so it runs after the VM has stopped.
        self.cleanups.push("stop virtiofsd processes", self.mounts.stop_daemons)
        # Released after the VM has stopped (and kept by a suspended one).
        self._take_disks()
        if self.dns is not None:  # answering before the guest's first query
            await self.dns.start()
            self.cleanups.push("stop the DNS server", self.dns.stop)
        if self.egress is not None:
            self.cleanups.push("stop the egress proxy's lookups", self.egress.close)
        if self.attach_pid:
            self.events.emit(phase="reattaching", sshLocalPort=self.ssh_port,
                             instanceId=self.instance_id)
            await self.driver.attach(self.attach_pid)
            self.mounts.adopt_daemons()
            await self._finish_interrupted_suspend()
        elif not self._prestarted:
            await self.mounts.start_static_daemons()
            self.events.emit(phase="booting", sshLocalPort=self.ssh_port,
                             instanceId=self.instance_id)
            await self.driver.start()
        self.cleanups.push("stop the VM", lambda: self.driver.stop(
            graceful=not (self._forced or self.checkpoints.suspended)))
        # Before that: the shares' daemons end with the VM, and that is no failure.
        self.cleanups.push("stop watching mount daemons", self.mounts.unwatch_all)
        if isinstance(self.driver, PausesOnFullDisk):
            self.disk_watch = DiskWatch(self.driver, inst.disk, inst.dir / "room.reserve",
                                        self.events, on_change=self._disk_changed)
            self.disk_watch.start()
            self.cleanups.push("stop watching the disk", self.disk_watch.stop)
        woken: asyncio.Future[None] | None = None
        if self.resume_state is not None:
            await self.checkpoints.run_restored()
            woken = asyncio.ensure_future(self.checkpoints.wake(self.resume_state))
        self.cleanups.push("close the SSH master", lambda: close_ssh_master(inst))
        self._write_runtime_file(self.driver.info())  # a takeover needs it: no start without

        # Readiness runs beside the API's start-up, and Running is announced
        # only once ha.sock accepts (its HTTP stack loads at the first client).
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
        async def serve() -> Serving:
            api_server = await asyncio.to_thread(_import_api_server)  # the loop goes on
            api = api_server(self.info, self.events.snapshot, self.mounts, self.session,
                             self.checkpoints)
            return await api.serving()

        sock = LazyApiSocket(serve)
        await sock.start(self.inst.ha_sock)
        self.cleanups.push("close ha.sock", lambda: sock.close(self.inst.ha_sock))

    def _readiness_failed(self, task: asyncio.Future[None]) -> None:
        """A boot that cannot become ready, or a readiness step that crashed
        (loudly: a bug), ends the host agent."""
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        if isinstance(error, RoostError):
            log.error("%s", error)
            self.events.add_error(str(error))
        else:
            log.error("readiness failed", exc_info=error)
            self.events.add_error(f"readiness failed: {error}")
        self._stop.set()

    def _runtime_changed(self) -> None:
        """runtime.json once for a burst of changes: a guest that opens two
        thousand listeners at once starts as many forwards, each of which
        yields to the loop, and a durable write of a file that grows with
        each one would take seconds in all."""
        if not self._runtime_write_due:
            self._runtime_write_due = True
            loop = asyncio.get_running_loop()
            # At once after a quiet spell; within a burst, once per delay.
            wait = self._runtime_written + RUNTIME_WRITE_DELAY - loop.time()
            loop.call_later(max(0.0, wait), self._write_runtime)

    def _write_runtime(self) -> None:
        self._runtime_write_due = False
        if self._runtime_removed:
            return
        self._runtime_written = asyncio.get_running_loop().time()
        info = self.driver.info()
        try:
            self._write_runtime_file(info)
        except OSError as e:  # a full file system: written again with the next change
            log.warning("cannot write %s: %s", self.inst.runtime, e)

    def _write_runtime_file(self, info: DriverInfo) -> None:
        write_atomic(self.inst.runtime, json.dumps({
            "hostagentPid": os.getpid(), "qemuPid": info.pid, "sshLocalPort": self.ssh_port,
            "dnsPort": self.dns_port,
            "accel": info.accel, "instanceId": self.instance_id, "startedAt": self.started_at,
            "portForwards": self.port_forwarding.active(),
            "health": self.session.health.get("summary", "-"),
            "state": self.ready_state, "degradedBy": self.degraded_by,
        }) + "\n")

    def _vm_running(self) -> bool:
        pid = self.driver.info().pid
        return pid is not None and pid_running(pid)

    def _forget_runtime_mounts(self) -> None:
        """The VM has stopped: its runtime mounts went with it (a suspend
        saved its own list of them, in suspended.json)."""
        if not self._vm_running():
            self.mounts.discard_saved()

    def _mount_failed(self, rec: MountRecord) -> None:
        """A share's daemon died: said at once, and the instance is degraded."""
        self.events.add_error(rec.error)
        self._mounts_changed()
        self.events.emit_transient(mountFailed={
            "mountPoint": rec.mount_point, "location": rec.location, "type": rec.type,
            "ephemeral": rec.ephemeral, "error": rec.error})

    def _mounts_changed(self) -> None:
        """Degraded by "mounts" while a share is failed (or failed at boot);
        decided by readiness until it has run. So is "disk"."""
        if self.ready_state == "starting":
            return
        self._decide_degraded()
        self._write_runtime()
        self.events.emit(degraded=bool(self.degraded_by))

    def _data_disks(self) -> tuple[DataDisk, ...]:
        """roost.yaml's additionalDisks, which must exist (they are taken at start)."""
        out = []
        for want in self.config.additional_disks:
            disk = Disk(want.name)
            if not disk.exists():
                raise HostAgentError(
                    f"additionalDisks: no disk named {want.name!r}; `roost disk create "
                    f"{want.name} --size 10GiB` makes one")
            out.append(DataDisk(want.name, disk.file, disk.format()))
        return tuple(out)

    def _take_disks(self) -> None:
        for want in self.config.additional_disks:
            Disk(want.name).acquire(self.inst.name)
            self.cleanups.push(f"release disk {want.name}",
                               functools.partial(self._release, want.name))

    def _release(self, name: str) -> None:
        if not self.checkpoints.suspended:  # a suspended VM still has the disk
            Disk(name).release(self.inst.name)

    def _port_forwards(self) -> list[PortForward]:
        try:
            return [rule.in_instance(self.inst.dir / "sock")
                    for rule in self.config.port_forwards]
        except ValueError as e:  # the instance's directory makes the path too long
            raise HostAgentError(f"portForwards: hostSocket: {e}") from None

    def _ca_certs(self) -> list[str]:
        try:
            return self.config.ca_certs.trusted()
        except ValueError as e:  # a file changed since roost.yaml was checked
            raise HostAgentError(f"caCerts.files: {e}") from None

    def _egress_proxy(self) -> EgressProxy | None:
        """network.allowOut's proxy, when there is a list (see egress.py)."""
        if not self.config.network.allow_out:
            return None
        from roost.config.allowout import AllowList
        from roost.hostagent.egress import EgressProxy

        return EgressProxy(AllowList.parse(self.config.network.allow_out))

    def _guest_env(self) -> dict[str, Any]:
        """roost.yaml's env, over the proxy variables: the egress proxy's
        with network.allowOut, else the host's (propagateProxyEnv)."""
        from roost.cidata.proxyenv import egress_proxy_env, proxy_env

        env: dict[str, Any] = {}
        if self.config.network.allow_out:
            env.update(egress_proxy_env())
        elif self.config.propagate_proxy_env:
            env.update(proxy_env(os.environ, HOST_ADDRESS))
        env.update(self.config.env)
        return env

    def _disk_changed(self) -> None:
        """Degraded by "disk" while the VM is paused on a full file system."""
        self._mounts_changed()

    def _decide_degraded(self) -> None:
        others = [d for d in self.degraded_by if d not in ("mounts", "disk")]
        failed = self.mount_errors or any(r.error for r in self.mounts.records.values())
        disk_full = self.disk_watch is not None and self.disk_watch.paused
        self.degraded_by = others + (["mounts"] if failed else []) + (
            ["disk"] if disk_full else [])
        self.ready_state = "degraded" if self.degraded_by else "running"

    def _discard_ram(self) -> None:
        if not self.checkpoints.suspended and isinstance(self.driver, Suspendable):
            self.driver.discard_ram_file()

    def _remove_runtime_files(self) -> None:
        self._runtime_removed = True  # a write still due must not bring it back
        self.inst.runtime.unlink(missing_ok=True)

    def info(self) -> dict[str, Any]:
        d = self.driver.info()
        return {
            "name": self.inst.name, "dir": str(self.inst.dir), "version": __version__,
            "instanceId": self.instance_id, "startedAt": self.started_at,
            "hostagentPid": os.getpid(), "sshLocalPort": self.ssh_port,
            "hostResolver": ({"port": self.dns.port, "refused": self.dns.resolver.refused}
                             if self.dns else None),
            "egressProxy": self.egress.info() if self.egress else None,
            "driver": {"name": d.name, "accel": d.accel, "pid": d.pid,
                       "sshAddress": f"{d.ssh.host}:{d.ssh.port}",
                       "guestAgent": d.guest_agent, "capabilities": d.capabilities},
            "requirements": [r.to_json() for r in self.results],
            "portForwards": self.port_forwarding.active(),
            "portForwardsFailed": self.port_forwarding.failed(),
            "mounts": self.mounts.listing(),
            "status": self.events.snapshot(),
        }

    # -- readiness ------------------------------------------------------------

    def requirements(self, resumed: bool = False, fresh_boot: bool = False
                     ) -> tuple[list[Requirement], list[Requirement], list[Requirement]]:
        async def ping_agent() -> None:
            try:
                client = await self.session.open()
                await client.request("ping", timeout=2.0)
            except GuestAgentError as e:
                await self.session.drop()
                raise NotReady(str(e)) from None
            # The guest's clock started from the RTC, which has whole seconds,
            # and under TCG runs off from there: 0.4 s ahead on the built-in
            # image, behind on debian-12 (a certificate made on the host just
            # now was "not yet valid" there). No NTP reaches a guest here.
            try:
                skew = (await client.request("set-clock", time=time.time(),
                                             timeout=2.0)).get("skew")
                log.info("guest clock set to the host's (moved by %ss)", skew)
            except GuestAgentError as e:
                log.warning("cannot set the guest's clock: %s", e)

        async def sshd_listening() -> None:
            while True:
                if self.session.connected:
                    with contextlib.suppress(GuestAgentError):
                        client = await self.session.open()
                        found = (await client.request("info", timeout=2.0)).get("ports")
                        if isinstance(found, list) and readiness.sshd_among(found):
                            return
                await asyncio.sleep(SSHD_POLL_INTERVAL)

        async def ssh(command: list[str], timeout: float) -> tuple[int, str]:
            return await run_ssh(self.inst, command, timeout)

        async def agent_boot_marker() -> str | None:
            if not self.session.connected:
                return None
            try:
                client = await self.session.open()
                return str((await client.request("boot-done", timeout=2.0)).get("marker", ""))
            except GuestAgentError:
                return None

        async def sshd_starting() -> None:
            await consolemark.wait_for_line(self.inst.serial_log, consolemark.SSHD_STARTING)

        ctx = readiness.ReadinessContext(
            inst=self.inst, info=self.driver.info(), boot_id=self.instance_id,
            cloud_image=self.config.cloud_image(), run_ssh=ssh, ping_agent=ping_agent,
            emit=self.events.emit_transient, agent_boot_marker=agent_boot_marker,
            sshd_listening=sshd_listening,
            # Only a fresh boot's console is new (QEMU truncates it at start).
            sshd_starting=sshd_starting if fresh_boot else None,
            boot_hang=self._boot_hang_watch(fresh_boot))
        return readiness.requirements(ctx, resumed)

    def _boot_hang_watch(self, fresh_boot: bool) -> BootHangWatch | None:
        driver = self.driver
        if not fresh_boot or not isinstance(driver, Resettable):
            return None

        def note(message: str) -> None:
            log.warning("%s", message)
            self.events.emit_transient(rebooted={"reason": message})

        return BootHangWatch(self.inst.serial_log, driver.reset, driver.end_resets,
                             alive=lambda: self.session.connected, note=note,
                             grace=boothang.grace_from_env())

    async def _wait_ssh_again(self) -> None:
        """The essential requirements again, as after boot (a snapshot was applied)."""
        essential, _, _ = self.requirements()
        for req in essential:
            result = await wait_for(req)
            if not result.ok:
                raise HostAgentError(f"after the restore: {result.error} "
                                     f"(hint: {req.debug_hint})")

    async def _run_list(self, reqs: list[Requirement]) -> list[Result]:
        results = []
        for req in reqs:
            self.events.emit(phase=f"waiting: {req.description}")
            left = None if self.start_deadline is None else self.start_deadline - time.monotonic()
            result = await wait_for(req, left)
            results.append(result)
            self.results.append(result)
            if not result.ok and req.kind == "essential":
                break
        return results

    async def _become_ready(self, api_up: asyncio.Event,
                            woken: asyncio.Future[None] | None) -> None:
        resumed = self.resume_state is not None
        essential, optional, final = self.requirements(
            resumed=resumed, fresh_boot=not resumed and not self.attach_pid)
        self.cleanups.push("disconnect the guest agent", self.session.drop)
        if woken is not None and self.checkpoints.forked:
            await woken  # a fork's guest has its own SSH host key only once woken
        # The guest agent is independent of SSH: wait for both at once.
        optional_task = asyncio.ensure_future(self._run_list(optional))
        try:
            # After the banner, the SSH login and the boot-done check at once.
            results = await self._run_list(essential[:1])
            for r in results:
                if r.fatal:  # the boot is lost: the VM is ended (no guest to shut
                    self._forced = True  # down) and the host agent with it
                    raise HostAgentError(r.error)
            if all(r.ok for r in results):
                final_task = asyncio.ensure_future(self._run_list(final))
                try:
                    results += await self._run_list(essential[1:])
                    if all(r.ok for r in results):
                        await self.port_forwarding.start(self.cleanups)
                        results += await final_task
                finally:
                    final_task.cancel()
            results += await optional_task
            if woken is not None:
                await woken
            if self.attach_pid:  # (a restored guest is moved on wake)
                await self.checkpoints.move_dns()
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
        agent = {"connected": self.session.connected}
        self.degraded_by = [r.requirement.name for r in failed] + (
            ["copyToHost"] if self.copy_errors else [])
        self._decide_degraded()
        self._write_runtime()
        await api_up.wait()
        self.events.emit(
            running=True, degraded=bool(self.degraded_by), phase="running",
            requirements=[r.to_json() for r in self.results], guestAgent=agent,
        )
        if self.lifecycle.wanted:  # its clock runs from Running
            self.cleanups.push("stop the lifecycle policy", self.lifecycle.close)
            self.lifecycle.start()
