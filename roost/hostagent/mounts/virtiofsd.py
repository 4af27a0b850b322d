"""virtiofsd processes: one per virtiofs share, started and stopped by pid."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path

from roost.errors import RoostError
from roost.store.instance import pid_running

CANDIDATES = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd")
SOCKET_WAIT_SECONDS = 5.0
STOP_SECONDS = 3.0
# QEMU 7.2's C virtiofsd locks a pid file named after its socket here.
PIDFILE_DIR = Path("/run/virtiofsd")


class VirtiofsdError(RoostError):
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
        self._adopted: int | None = None  # a pid from a host agent that died

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else self._adopted

    @property
    def pidfile(self) -> Path:
        return PIDFILE_DIR / (str(self.socket_path).replace("/", ".") + ".pid")

    def adopt(self) -> bool:
        """Take over the virtiofsd serving our socket that a host agent which
        died started (found by its pid file, checked by its command line)."""
        try:
            pid = int(self.pidfile.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return False
        if f"--socket-path={self.socket_path}".encode() not in cmdline.split(b"\0"):
            return False
        self._adopted = pid
        return True

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
            await self._stop_adopted()
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
        self.pidfile.unlink(missing_ok=True)  # virtiofsd leaves it behind

    async def _stop_adopted(self) -> None:
        """Not our child: signal it and watch /proc (its parent, init, reaps it)."""
        pid, self._adopted = self._adopted, None
        if pid is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_SECONDS
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        while pid_running(pid):
            if loop.time() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.02)
        self.socket_path.unlink(missing_ok=True)
        self.pidfile.unlink(missing_ok=True)

