"""The host agent's checkpoint operations run one at a time: a snapshot (or
a suspend) asked for while a fork's disk copy has the VM paused waits for
the copy and its resume, rather than saving a VM the copy then resumes."""

from __future__ import annotations

import asyncio
import io
import subprocess
from pathlib import Path
from typing import Any

import pytest

from roost.hostagent.checkpoint import Checkpoints
from roost.hostagent.events import EventEmitter
from roost.store.instance import Instance


class GatedDriver:
    """VMSnapshots whose disk copy holds until the test lets it go; it logs
    what the VM went through."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.copying = asyncio.Event()
        self.release = asyncio.Event()

    async def snapshot_save(self, tag: str) -> str:
        self.log.append(f"savevm {tag}")
        return "disk"

    async def snapshot_load(self, tag: str) -> None:
        self.log.append(f"loadvm {tag}")

    async def snapshot_delete(self, tag: str) -> None:
        self.log.append(f"delvm {tag}")

    def machine_at_snapshot(self, tag: str) -> dict[str, Any]:
        return {}

    async def copy_disk(self, dest: Path) -> None:
        self.log.append("stop")
        self.copying.set()
        await self.release.wait()
        dest.write_bytes(b"copy")
        self.log.append("cont")


async def test_a_snapshot_waits_for_the_disk_copy(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOST_HOME", str(tmp_path))
    inst = Instance.at("dev")
    inst.dir.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(inst.disk), "16M"],
                   check=True)
    driver = GatedDriver()

    async def no_ssh() -> None:
        raise AssertionError("no snapshot is applied here")

    checkpoints = Checkpoints(inst, driver, None, None, EventEmitter(io.StringIO()),  # type: ignore[arg-type]
                              identity={}, stop=lambda: None, wait_ssh=no_ssh)
    copy = asyncio.create_task(checkpoints.copy_disk(str(tmp_path / "fork.qcow2")))
    await driver.copying.wait()
    snap = asyncio.create_task(checkpoints.snapshot_create("s1"))
    await asyncio.sleep(0.1)
    assert not snap.done() and driver.log == ["stop"]  # waiting, not saving a paused VM
    driver.release.set()
    assert (await copy)["path"] == str(tmp_path / "fork.qcow2")
    assert await snap == {"tag": "s1", "state": "disk"}
    assert driver.log == ["stop", "cont", "savevm s1"]
