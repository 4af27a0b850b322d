"""The readiness requirements of one boot: essential, optional and final.

Essential: sshd answers (the RFC 4253 banner), then a command runs over
SSH. Optional: the guest agent answers. Final: the boot scripts have
finished: asked of the guest agent when it answers, so that it runs
beside the SSH login (most of what follows the banner under TCG), else
over SSH once the login worked (one login at a time: each costs the guest
~0.3 s of CPU under TCG). On a cloud image it is cloud-init finished, with
its progress reported as Lima's `cloudInitProgress` and its errors failing
the requirement at once (the instance is then degraded, not left waiting).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from roost.cidata import BOOT_DONE_MARKER
from roost.driver.base import GUEST_SSH_PORT, DriverInfo
from roost.hostagent import banner, cloudinit
from roost.hostagent.boothang import BootHang, BootHangWatch
from roost.hostagent.requirements import NotReady, Requirement
from roost.store.instance import Instance

ESSENTIAL_TIMEOUT = 300.0
OPTIONAL_TIMEOUT = 60.0
FINAL_TIMEOUT = 600.0
SSH_COMMAND_TIMEOUT = 20.0
# How often a cloud image's boot is looked at over SSH (each look forks a
# few processes in a guest that cloud-init already keeps busy).
CLOUD_INIT_POLL = 1.0

RunSSH = Callable[[list[str], float], Awaitable[tuple[int, str]]]


@dataclass
class ReadinessContext:
    """What the checks need from the host agent."""

    inst: Instance
    info: DriverInfo
    boot_id: str
    cloud_image: bool
    run_ssh: RunSSH
    ping_agent: Callable[[], Awaitable[None]]  # raises NotReady
    emit: Callable[..., None]  # events.emit_transient
    # The boot-done marker's line from the guest agent; None without one.
    agent_boot_marker: Callable[[], Awaitable[str | None]]
    ssh_works: asyncio.Event = field(default_factory=asyncio.Event)
    # Each returns once the guest says sshd is starting or listens: the guest
    # agent sees it listen (it needs no network), the built-in image's sshd
    # launcher says so on the console (consolemark). Kicks for the probe.
    sshd_listening: Callable[[], Awaitable[None]] | None = None
    sshd_starting: Callable[[], Awaitable[None]] | None = None
    # Watches a fresh boot's console for a kernel hung before sshd; None after
    # a resume or a takeover, or where the VM cannot be reset.
    boot_hang: BootHangWatch | None = None


def sshd_among(listeners: list[dict[str, Any]]) -> bool:
    """Whether the guest agent's listening sockets include sshd's, reachable
    from outside the guest (not on loopback only)."""
    return any(entry.get("proto") == "tcp" and entry.get("port") == GUEST_SSH_PORT
               and not str(entry.get("ip", "")).startswith("127.") and entry.get("ip") != "::1"
               for entry in listeners)


async def _banner_unless_hung(info: DriverInfo, kick: asyncio.Event,
                              hang: asyncio.Future[None] | None) -> None:
    """The banner, or BootHang from the watch, whichever comes first."""
    wait: asyncio.Future[Any] = asyncio.ensure_future(banner.wait_for_banner(
        info.ssh.host, info.ssh.port, timeout=ESSENTIAL_TIMEOUT, kick=kick))
    try:
        if hang is not None:
            await asyncio.wait({wait, hang}, return_when=asyncio.FIRST_COMPLETED)
            if hang.done() and not hang.cancelled() and hang.exception() is not None:
                hang.result()  # raises BootHang
        await wait
    finally:
        wait.cancel()


def _set_if_done(task: asyncio.Future[None], event: asyncio.Event) -> None:
    if not task.cancelled() and task.exception() is None:
        event.set()


def _check_marker(line: str, boot_id: str, log: str) -> None:
    parts = line.split()
    if not parts:
        raise NotReady("boot scripts still running")
    if parts[0] != boot_id:
        raise NotReady("boot-done marker is from another boot")
    if len(parts) > 1 and parts[1] != "0":
        step = f" {cloudinit.printable(parts[2][:80])}" if len(parts) > 2 else ""
        raise NotReady(f"provisioning step{step} failed; see {log} in the guest",
                       permanent=True)


class CloudInitWatch:
    """The final requirement of a cloud image, and its progress events."""

    def __init__(self, ctx: ReadinessContext) -> None:
        self.ctx = ctx
        self._last_line = ""
        self.state = cloudinit.CloudInitState()

    async def poll(self) -> cloudinit.CloudInitState:
        await self.ctx.ssh_works.wait()
        status, out = await self.ctx.run_ssh(["sh", "-c", cloudinit.PROBE],
                                             SSH_COMMAND_TIMEOUT)
        if status != 0:
            raise NotReady(f"cannot read cloud-init's status over SSH (exit {status}): "
                           f"{out[-200:]}")
        self.state = cloudinit.parse(out)
        return self.state

    async def check(self) -> None:
        state = await self.poll()
        if state.log_line and state.log_line != self._last_line:
            self._last_line = state.log_line
            self.ctx.emit(cloudInitProgress={"logLine": state.log_line, "completed": False,
                                             "active": True})
        if state.failed:
            self.ctx.emit(cloudInitProgress={"logLine": state.log_line, "completed": True,
                                             "active": False, "errors": state.errors})
            raise NotReady("cloud-init failed: " + "; ".join(state.errors), permanent=True)
        if not state.finished:
            raise NotReady(f"cloud-init is running ({state.stage or 'starting'})")
        _check_marker(state.boot_done, self.ctx.boot_id, "/run/roost/provision.log")
        self.ctx.emit(cloudInitProgress={"logLine": state.log_line, "completed": True,
                                         "active": False})


def requirements(ctx: ReadinessContext, resumed: bool = False
                 ) -> tuple[list[Requirement], list[Requirement], list[Requirement]]:
    """Essential, optional and final requirements.

    After a resume the guest is exactly as it was when it last passed them
    all, so only the path from the host is checked again: sshd answers
    through the new QEMU's forward and a login works (the old SSH
    connection went with the old QEMU: made again here, beside the guest
    agent's `wake`, so that Running means what it means after a boot).
    """
    inst, info = ctx.inst, ctx.info
    logs = f"the guest console log {inst.serial_log} and {inst.qemu_log}"
    watch = CloudInitWatch(ctx) if ctx.cloud_image else None

    async def check_banner() -> None:
        kick = asyncio.Event()
        kickers = [asyncio.ensure_future(says())
                   for says in (ctx.sshd_listening, ctx.sshd_starting) if says is not None]
        for task in kickers:
            task.add_done_callback(lambda t: _set_if_done(t, kick))
        hang = None if ctx.boot_hang is None else asyncio.ensure_future(ctx.boot_hang.run())
        try:
            await _banner_unless_hung(info, kick, hang)
        except banner.BannerError as e:
            raise NotReady(str(e), permanent=not e.retryable) from None
        except BootHang as e:
            raise NotReady(str(e), fatal=True) from None
        finally:
            for task in kickers:
                task.cancel()
            if hang is not None:
                hang.cancel()

    async def check_ssh() -> None:
        status, out = await ctx.run_ssh(["true"], SSH_COMMAND_TIMEOUT)
        if status != 0:
            raise NotReady(f"`ssh true` exited {status}: {out[-300:]}")
        ctx.ssh_works.set()

    async def check_agent() -> None:
        try:
            await ctx.ping_agent()
        except NotReady:
            # A cloud image without python3 says so (roost-boot's note, read
            # by the cloud-init watch's polls); waiting longer won't help.
            if watch is not None and watch.state.agent_missing:
                raise NotReady(watch.state.agent_missing, permanent=True) from None
            raise

    async def check_boot_done() -> None:
        out = await ctx.agent_boot_marker()
        if out is None:
            await ctx.ssh_works.wait()
            status, out = await ctx.run_ssh(["cat", BOOT_DONE_MARKER], SSH_COMMAND_TIMEOUT)
            if status != 0:
                raise NotReady("boot scripts still running")
        _check_marker(out, ctx.boot_id, "/run/roost/provision.log")

    essential = [
        Requirement("ssh-banner", "essential",
                    f"the guest's sshd answers on {info.ssh.host}:{info.ssh.port}",
                    check_banner,
                    f"the guest did not start sshd; look at {logs}", ESSENTIAL_TIMEOUT),
        Requirement("ssh", "essential", "a command runs over SSH", check_ssh,
                    f"sshd answers but login fails; run `ssh -v -F {inst.ssh_config} "
                    f"roost-{inst.name} true` and see {inst.ha_stderr}",
                    ESSENTIAL_TIMEOUT, retry_interval=0.2),
    ]
    agent_hint = (f"the guest agent did not answer over {info.guest_agent}; see "
                  f"/run/roost/guestagent.log in the guest and {inst.serial_log}")
    if ctx.cloud_image:
        agent_hint += ("; a cloud image needs python3 >= 3.8 for it (ports are then "
                       "forwarded over SSH, and mounts need the agent)")
    optional = [
        # A cloud image starts the agent from cloud-init, a minute or more
        # into its boot under TCG: its wait covers the essential ones too.
        Requirement("guest-agent", "optional", "the guest agent answers ping", check_agent,
                    agent_hint,
                    OPTIONAL_TIMEOUT + (ESSENTIAL_TIMEOUT if ctx.cloud_image else 0.0),
                    retry_interval=0.1 if not ctx.cloud_image else 0.5),
    ]
    if watch is not None:
        final = [Requirement(
            "cloud-init", "final", "cloud-init has finished", watch.check,
            "see /var/log/cloud-init.log and /var/log/cloud-init-output.log in the guest "
            f"(`roost shell {inst.name} -- sudo cloud-init status --long`)",
            FINAL_TIMEOUT, retry_interval=CLOUD_INIT_POLL)]
    else:
        final = [Requirement(
            "boot-scripts", "final", "boot scripts have finished", check_boot_done,
            "see /run/roost/provision.log in the guest (`roost shell "
            f"{inst.name} -- cat /run/roost/provision.log`)",
            FINAL_TIMEOUT, retry_interval=0.1)]
    if resumed:
        return essential, optional, []
    return essential, optional, final
