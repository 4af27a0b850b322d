"""virtiofsd processes: one per virtiofs share, confined to it, stopped by pid.

QEMU 7.2's C virtiofsd wants root and has no read-only option. Each runs
in a user namespace of its own as the share's owner (roost.hostagent.userns),
so it has no privilege on the host beyond that user's, and sees the share
read-only when it was shared read-only. The host agent makes the
vhost-user socket and hands it over (--fd): the confined daemon needs no
write access to the instance directory. Its pid goes to a file beside the
socket, so a host agent that takes over a running VM can adopt it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
from pathlib import Path

from roost.errors import RoostError
from roost.hostagent.procwatch import how_it_ended, open_pidfd, wait_pidfd
from roost.hostagent.userns import SCRATCH, Bind, Owner, spawn_confined
from roost.store.durable import write_atomic
from roost.store.instance import pid_running

log = logging.getLogger(__name__)

CANDIDATES = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd")
READY_SECONDS = 5.0
STOP_SECONDS = 3.0
# After SIGKILL a process is gone at once, unless it is stuck in the kernel
# (D state, e.g. on a hung file system): then it is not waited for forever.
KILL_SECONDS = 5.0
# What virtiofsd logs once it waits for QEMU on the socket.
READY_LINE = "Waiting for vhost-user socket connection"
SOCKET_ENV = "ROOST_VIRTIOFSD_SOCKET"
SHARE_IN_NAMESPACE = SCRATCH + "/share"  # what it serves, the share bound there


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
    def __init__(self, binary: str, socket_path: Path, source: str, log_path: Path,
                 writable: bool = True) -> None:
        self.binary = binary
        self.socket_path = socket_path
        self.source = source
        self.log_path = log_path
        self.writable = writable
        self._proc: asyncio.subprocess.Process | None = None
        self._adopted: int | None = None  # a pid from a host agent that died
        self._pidfd: int | None = None  # the adopted one's, to learn of its end

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else self._adopted

    @property
    def pidfile(self) -> Path:
        return self.socket_path.with_name(self.socket_path.name + ".pid")

    def _argv(self, fd: int) -> list[str]:
        source = SHARE_IN_NAMESPACE.replace(",", ",,")  # -o takes a comma-separated list
        # sandbox=chroot: one process (the namespace sandbox forks a child that
        # outlives a SIGTERMed parent), inside our own namespaces anyway.
        # rlimit-nofile=0: raising it needs privilege it does not have.
        return [self.binary, f"--fd={fd}", "-o", f"source={source}", "-o", "cache=auto",
                "-o", "sandbox=chroot", "--rlimit-nofile=0"]

    def _environment(self) -> dict[str, str]:
        """Its whole environment: which socket it serves, for adopt() (and for
        anyone looking for an instance's daemons in /proc)."""
        return {SOCKET_ENV: str(self.socket_path)}

    def adopt(self, pid: int | None = None) -> bool:
        """Take over the virtiofsd serving our socket that a host agent which
        died started: `pid`, else the one in its pid file, checked by its
        binary and environment. Its pidfd is opened before the checks, so
        the process checked is the one later watched and stopped."""
        try:
            pid = pid or int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        pidfd = open_pidfd(pid)
        if pidfd is None:
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            os.close(pidfd)
            return False
        marker = f"{SOCKET_ENV}={self.socket_path}".encode()
        if cmdline.split(b"\0")[0] != self.binary.encode() or marker not in environ.split(b"\0"):
            os.close(pidfd)
            return False
        self._adopted, self._pidfd = pid, pidfd
        return True

    async def exited(self) -> str:
        """Wait for the daemon to end; how it ended (an adopted one's status
        is its dead parent's to know: only that it exited)."""
        if self._proc is not None:
            return how_it_ended(await self._proc.wait())
        if self._pidfd is not None:
            await wait_pidfd(self._pidfd)
            return how_it_ended(None)
        return "is not running"

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    async def start(self) -> None:
        if self.adopt():  # this socket's daemon, left by a host agent that died
            log.warning("stopping virtiofsd (pid %s) left for %s by an earlier host agent",
                        self._adopted, self.socket_path.name)
            await self.stop()
        self.socket_path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        try:
            listener.bind(str(self.socket_path))
            listener.listen(1)
            fd = listener.fileno()
            with open(self.log_path, "ab") as daemon_log:
                self._proc = await spawn_confined(
                    self._argv(fd), [Bind(self.source, SHARE_IN_NAMESPACE, not self.writable)],
                    Owner.of_share(self.source), chroot=False, setgroups=True, capabilities=True,
                    stdout=daemon_log, stderr=daemon_log, pass_fds=(fd,), env=self._environment())
        except BaseException:
            self.socket_path.unlink(missing_ok=True)
            raise
        finally:
            listener.close()  # the daemon has its own copy
        write_atomic(self.pidfile, f"{self._proc.pid}\n")
        await self._wait_ready(log_from)

    def _log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    async def _wait_ready(self, log_from: int) -> None:
        assert self._proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_SECONDS
        while READY_LINE not in self._log_since(log_from):
            if self._proc.returncode is not None or loop.time() > deadline:
                await self.stop()
                tail = self._log_since(log_from).strip().splitlines()[-3:]
                raise VirtiofsdError(f"virtiofsd for {self.source} did not start: "
                                     + " / ".join(tail))
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL; always reaped, so never a zombie."""
        proc = self._proc
        if proc is None:
            try:
                await self._stop_adopted()
            finally:
                self._close_pidfd()
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
        self.pidfile.unlink(missing_ok=True)

    async def _stop_adopted(self) -> None:
        """Not our child: signal it and watch /proc (its parent, init, reaps it)."""
        pid, self._adopted = self._adopted, None
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not await _gone(pid, STOP_SECONDS):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not await _gone(pid, KILL_SECONDS):
                # Its pid file stays, so whoever looks next still finds it.
                log.error("virtiofsd (pid %d, %s) for %s outlived SIGTERM and SIGKILL by "
                          "%gs (process state %s); left running", pid, self.socket_path,
                          self.source, STOP_SECONDS + KILL_SECONDS, _process_state(pid))
                return
        self.socket_path.unlink(missing_ok=True)
        self.pidfile.unlink(missing_ok=True)


async def _gone(pid: int, seconds: float) -> bool:
    """Whether process `pid` ends (or is a zombie) within `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while pid_running(pid):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _process_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"

