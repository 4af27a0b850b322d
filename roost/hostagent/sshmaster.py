"""Commands in the guest over SSH, through the instance's ControlMaster.

The master (ssh.sock) is opened by the first command and shared by the
rest; it is closed at shutdown, and after a snapshot is applied, when the
guest's TCP state no longer matches the master's.
"""

from __future__ import annotations

import asyncio
import contextlib

from roost.sshutil.config import control_argv, ssh_argv
from roost.store.instance import Instance

MASTER_EXIT_SECONDS = 5.0


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


async def close_ssh_master(inst: Instance) -> None:
    if not inst.ssh_sock.exists():
        return
    proc = await asyncio.create_subprocess_exec(
        *control_argv(inst, "exit"), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.wait_for(proc.wait(), MASTER_EXIT_SECONDS)
    except TimeoutError:
        proc.kill()
        await proc.wait()
    inst.ssh_sock.unlink(missing_ok=True)
