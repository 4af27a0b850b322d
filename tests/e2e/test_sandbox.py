"""QEMU runs in its seccomp sandbox, booted and resumed: it cannot spawn."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Roost, pid_running, small_vm, wait_until

SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


@pytest.fixture(scope="module")
def jail(roost: Roost) -> Iterator[str]:
    with small_vm(roost, "jail") as name:
        yield name


def seccomp_mode(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Seccomp:"):
            return line.split()[1]
    raise AssertionError(f"/proc/{pid}/status has no Seccomp line")


def assert_sandboxed(roost: Roost, name: str) -> int:
    pid = roost.pid(name, "qemu.pid")
    assert pid is not None and pid_running(pid)
    assert seccomp_mode(pid) == "2"  # a seccomp filter
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"-sandbox") + 1] == SANDBOX.encode()
    return pid


def test_booted_and_resumed_qemu_is_sandboxed(roost: Roost, jail: str) -> None:
    booted = assert_sandboxed(roost, jail)
    roost.run("shell", jail, "--", "sh", "-c", "echo kept > /root/kept")
    roost.run("suspend", jail, timeout=300)
    # QEMU wrote its state through the descriptor the driver opened.
    assert stat.S_IMODE((roost.home / jail / "vmstate.bin").stat().st_mode) == 0o600
    roost.run("resume", jail, timeout=300)
    assert assert_sandboxed(roost, jail) != booted
    assert roost.run("shell", jail, "--", "cat", "/root/kept").stdout == "kept\n"


async def migrate_to_a_program(qmp_sock: Path) -> None:
    from qemu.qmp import ExecInterruptedError, QMPClient

    qmp = QMPClient("e2e")
    await qmp.connect(str(qmp_sock))
    try:
        status = await qmp.execute("query-status")
        assert isinstance(status, dict) and status["status"] == "running"
        # QEMU forks a shell for exec:, which the sandbox answers with SIGSYS:
        # no error reply, the connection ends with QEMU.
        with pytest.raises(ExecInterruptedError):
            await asyncio.wait_for(qmp.execute("migrate", {"uri": "exec:true"}), 10)
    finally:
        with contextlib.suppress(EOFError):  # its reader saw QEMU end
            await qmp.disconnect()


def test_qemu_cannot_spawn_a_program(roost: Roost, jail: str) -> None:
    qemu = assert_sandboxed(roost, jail)
    host_agent = roost.pid(jail, "ha.pid")
    assert host_agent is not None
    # QMP serves one client: the host agent goes, QEMU stays (as a Broken instance).
    os.kill(host_agent, signal.SIGKILL)
    wait_until(lambda: not pid_running(host_agent), 10, "the host agent to die")
    asyncio.run(migrate_to_a_program(roost.home / jail / "qmp.sock"))
    wait_until(lambda: not pid_running(qemu), 10, "the sandbox to end QEMU")
    roost.run("stop", jail)
    assert roost.ls()[jail]["status"] == "Stopped"
