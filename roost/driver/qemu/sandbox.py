"""QEMU's seccomp sandbox: on for every VM unless the host opts out.

A guest that breaks into QEMU should find no way to run programs, gain
privileges, change scheduling or use obsolete system calls. So QEMU opens
nothing on our behalf through a shell either: a VM's state goes to files
through descriptors the driver passes over QMP (not `exec:`).

A security default does not weaken silently: a QEMU built without seccomp
is an error naming the way out, ROOST_QEMU_SANDBOX=off, and a VM started
that way is logged as unsandboxed.

QEMU 7.2 installs the filter before -daemonize forks, which spawn=deny then
kills (measured: SIGSYS): the driver starts QEMU as its child instead.
"""

from __future__ import annotations

import asyncio
import logging
import os

from roost.driver.base import DriverError

log = logging.getLogger(__name__)

SANDBOX_OPTION = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
OPT_OUT_ENV = "ROOST_QEMU_SANDBOX"
PROBE_SECONDS = 10.0


def sandbox_argv() -> list[str]:
    return ["-sandbox", SANDBOX_OPTION]


def sandbox_wanted() -> bool:
    """ROOST_QEMU_SANDBOX: unset or `on` (the default), or `off`."""
    value = os.environ.get(OPT_OUT_ENV, "on").strip().lower()
    if value not in ("on", "off"):
        raise DriverError(f"{OPT_OUT_ENV} must be on or off, not {value!r}")
    return value == "on"


async def sandbox_supported(qemu: str) -> str | None:
    """None when `qemu` takes our -sandbox option, else QEMU's complaint.

    QEMU parses its options in order and -version exits at once: a QEMU
    without seccomp stops first at -sandbox ("not supported by this
    binary"). Whether the kernel takes the filter shows when the VM starts.
    """
    proc = await asyncio.create_subprocess_exec(
        qemu, *sandbox_argv(), "-version", stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), PROBE_SECONDS)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"{qemu} -version did not answer in {PROBE_SECONDS:g}s"
    if proc.returncode == 0:
        return None
    return err.decode(errors="replace").strip() or f"exit status {proc.returncode}"


async def use_sandbox(qemu: str, name: str) -> bool:
    """Whether VM `name` runs sandboxed; an error when it should and cannot."""
    if not sandbox_wanted():
        log.warning("%s=off: QEMU of %s runs without its seccomp sandbox", OPT_OUT_ENV, name)
        return False
    problem = await sandbox_supported(qemu)
    if problem is not None:
        raise DriverError(
            f"{qemu} cannot run sandboxed (-sandbox {SANDBOX_OPTION}): {problem}\n"
            f"Install a QEMU built with seccomp (Debian's qemu-system-x86 is), or set "
            f"{OPT_OUT_ENV}=off to run VMs without the sandbox.")
    return True
