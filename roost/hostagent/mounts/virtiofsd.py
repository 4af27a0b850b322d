"""virtiofsd processes: one per virtiofs share, started and stopped by pid."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path

CANDIDATES = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd")
SOCKET_WAIT_SECONDS = 5.0


class VirtiofsdError(Exception):
    pass


def find_virtiofsd() -> str | None:
    """Debian ships QEMU's C virtiofsd in /usr/lib/qemu; newer systems the Rust
    one in /usr/libexec or on PATH."""
    on_path = shutil.which("virtiofsd")
    if on_path:
        return on_path
    for candidate in CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class Virtiofsd:
    def __init__(self, binary: str, socket_path: Path, source: str, log_path: Path) -> None:
        self.binary = binary
        self.socket_path = socket_path
        self.source = source
        self.log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def start(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        source = self.source.replace(",", ",,")  # -o takes a comma-separated list
        # sandbox=chroot: one process. The default namespace sandbox forks a
        # child that outlives a SIGTERMed parent as a zombie nobody reaps.
        argv = [self.binary, f"--socket-path={self.socket_path}", "-o", f"source={source}",
                "-o", "cache=auto", "-o", "sandbox=chroot"]
        with open(self.log_path, "ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SOCKET_WAIT_SECONDS
        while not self.socket_path.exists():
            if self._proc.returncode is not None or loop.time() > deadline:
                await self.stop()
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise VirtiofsdError(f"virtiofsd for {self.source} did not start: "
                                     + " / ".join(tail))
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL; always reaped, so never a zombie."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 3.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        self.socket_path.unlink(missing_ok=True)
