"""`roost hostagent NAME`: the host agent process's entry point.

Kept light on purpose. A resume starts QEMU loading the saved state first
and only then imports the rest of the host agent (pydantic, aiohttp: about
0.4 s here), so the two overlap instead of adding up. A cold start imports
it while `roost start` prepares the disk, and waits for its go-ahead
(roost.hostagent.handoff) before it touches the instance, its lock and
logs included.

The restored VM starts paused (-S). When roost.yaml is byte for byte the one
the saved VM was started with, it runs at once: the guest (slow for a while
under TCG, its translated code is gone) then warms up during the imports.
Otherwise it stays paused until the host agent has validated the edited
config, so a broken roost.yaml fails the resume with the saved state intact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from roost.driver.base import Driver, SuspendableDriver
from roost.driver.factory import restore_driver
from roost.errors import RoostError
from roost.hostagent import handoff
from roost.hostagent.events import EventEmitter
from roost.hostagent.guestagent import GuestAgentClient, GuestAgentError
from roost.store import agentlock
from roost.store.durable import write_atomic
from roost.store.instance import Instance
from roost.store.logfile import Rotation

if TYPE_CHECKING:
    from roost.hostagent.agent import HostAgent

log = logging.getLogger("roost.hostagent")


class _RotatingHandler(logging.StreamHandler[TextIO]):
    """Logging to stderr, whose file (ha.stderr.log) is rotated past a size."""

    def __init__(self, rotation: Rotation | None) -> None:
        super().__init__(sys.stderr)
        self.rotation = rotation

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if self.rotation is not None:
            self.rotation.check()


def main(name: str) -> int:
    """Runs until signalled or the VM exits; the exit status."""
    inst = Instance.at(name).require()
    if handoff.awaits_go_ahead():
        # `roost start` validates roost.yaml and prepares the disk meanwhile.
        failed: Exception | None = None
        try:
            _import_host_agent()
        except Exception as e:  # a broken installation: said in the log, after GO
            failed = e
        if not handoff.wait_for_go_ahead():
            return 0  # called off: nothing of the instance's was touched
        handoff.take_logs(inst.ha_stdout, inst.ha_stderr)
        if failed is not None:
            raise failed
    logging.basicConfig(
        level=logging.INFO, handlers=[_RotatingHandler(Rotation.of(sys.stderr, inst.ha_stderr))],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    lock = agentlock.take(inst.ha_lock)  # held for the agent's whole life
    if lock is None:
        print(f"roost hostagent: a host agent for {name!r} is already running",
              file=sys.stderr)
        return 1
    write_atomic(inst.ha_pid, f"{os.getpid()}\n")
    try:
        events = EventEmitter(sys.stdout, Rotation.of(sys.stdout, inst.ha_stdout))
        return asyncio.run(_serve(inst, events))
    finally:
        inst.ha_pid.unlink(missing_ok=True)


async def _serve(inst: Instance, events: EventEmitter) -> int:
    started = time.monotonic()
    restore: Restore | None = None
    try:
        restore = await _start_restore(inst, events)
        # The heavy part, in a thread: meanwhile the loop wakes a restored guest.
        host_agent = await asyncio.to_thread(_import_host_agent)
        agent = host_agent(inst, events)
        agent.new(restore)
    except Exception as e:
        if restore is not None:
            await _abandon(inst, restore.driver, restore.woken)
        if not isinstance(e, RoostError):
            log.exception("host agent failed")
        events.add_error(str(e) if isinstance(e, RoostError) else f"{type(e).__name__}: {e}")
        events.emit(exiting=True, phase="stopped")
        return 1
    log.info("New done in %.3fs", time.monotonic() - started)
    return await agent.run()


def _import_host_agent() -> type[HostAgent]:
    from roost.hostagent.agent import HostAgent

    return HostAgent


@dataclass
class Restore:
    """A QEMU loading a suspended instance's state (perhaps running it already)."""

    driver: SuspendableDriver
    saved: dict[str, Any]  # suspended.json, read before the VM could run
    # When it runs: the guest agent session that is waking it (see _wake).
    woken: asyncio.Future[GuestAgentClient] | None = None


async def _start_restore(inst: Instance, events: EventEmitter) -> Restore | None:
    """A suspended instance: QEMU started on the machine it was saved from."""
    if not inst.suspended.exists() or inst.qemu_pid_alive():
        return None
    saved = inst.read_suspended()
    driver = restore_driver(inst, saved)
    if driver is None:  # saved by an older roost: HostAgent.new rebuilds the machine
        return None
    events.emit(phase="restoring the saved state", sshLocalPort=driver.info().ssh.port,
                instanceId=saved.get("instanceId"))
    await driver.start()
    if saved.get("configDigest") and saved["configDigest"] == inst.config_digest():
        try:
            await driver.run_loaded()
        except BaseException:
            await _abandon(inst, driver)
            raise
        inst.drop_saved_state()
        return Restore(driver, saved, asyncio.ensure_future(_wake(driver)))
    return Restore(driver, saved)


async def _wake(driver: Driver) -> GuestAgentClient:
    """The guest agent's `wake`, sent as soon as the restored VM runs: under
    TCG the guest is slow until its code is translated again, and this way
    that happens while the host agent is still being imported."""
    client = GuestAgentClient(driver.guest_agent_dialer())
    try:
        await client.connect()
        await client.request("wake", timeout=60.0, time=time.time())
    except OSError as e:
        await client.close()
        raise GuestAgentError(f"cannot connect to the guest agent: {e}") from None
    except BaseException:
        await client.close()
        raise
    return client


async def _abandon(inst: Instance, driver: SuspendableDriver,
                   woken: asyncio.Future[GuestAgentClient] | None = None) -> None:
    """End a restore that cannot go on. Still paused, the saved state is kept
    for another try; once the VM has run, only a cold start is left."""
    if woken is not None:
        woken.cancel()
        with contextlib.suppress(BaseException):
            await (await woken).close()
    await driver.stop(graceful=False)
    if not inst.suspended.exists():
        driver.discard_ram_file()
