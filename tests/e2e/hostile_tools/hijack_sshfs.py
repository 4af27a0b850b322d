"""Guest root takes over the SFTP session of a running reverse-sshfs mount.

    python3 -m hostile_tools.hijack_sshfs MOUNT_POINT EXISTING HOST_SECRET [LINK...]

The sshfs serving MOUNT_POINT speaks SFTP on its stdin/stdout, a socket to
the host. We stop it, copy that socket out of it (pidfd_getfd) and send our
own requests: the host, not the guest's sshfs, must refuse what the share
does not allow. Prints {"escapes": {...}} (sftp.probe_escapes), and with
EXISTING (a file in the share; "-" for none) {"readOnly": {...}} too: the
writes of sftp.probe_read_only, for a read-only share. sshfs is resumed
afterwards.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import sys

from . import sftp

SYS_PIDFD_GETFD = 438


def sshfs_pid(mount_point: str) -> int:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"sshfs") and mount_point.encode() in argv:
            return int(entry)
    raise SystemExit(f"no sshfs serves {mount_point}")


def steal_fd(pid: int, fd: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        got = int(libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0))
        if got < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pidfd_getfd: {os.strerror(err)}")
        return got
    finally:
        os.close(pidfd)


def main() -> None:
    mount_point, existing, host_secret, *links = sys.argv[1:]
    pid = sshfs_pid(mount_point)
    os.kill(pid, signal.SIGSTOP)
    try:
        fd = steal_fd(pid, 0)

        def recv() -> bytes:
            ready, _, _ = select.select([fd], [], [], 20.0)
            return os.read(fd, 65536) if ready else b""

        def send(data: bytes) -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]

        client = sftp.Sftp(send, recv)
        escapes = sftp.probe_escapes(client, "/share", host_secret, links)
        result: dict[str, object] = {"escapes": escapes}
        if existing != "-":
            result["readOnly"] = sftp.probe_read_only(client, "/share", existing)
        os.close(fd)
    finally:
        os.kill(pid, signal.SIGCONT)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
