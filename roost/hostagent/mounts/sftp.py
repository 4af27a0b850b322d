"""Reverse sshfs, host side: sftp-server for a guest's sshfs, over a stream.

The guest agent runs `sshfs -o passive` with its stdin/stdout on a stream
it opens to the host; here that stream is joined to a local sftp-server
process. No port is opened on the host and no SSH login is needed.

The host decides what is served. A stream is served only when it carries
a token the host issued for one mount (SftpGrants.grant), used once; the
folder and read-only come from the host's record, never from the guest.
sftp-server itself only sets a start directory (-d), so it runs confined
(roost.hostagent.userns): on an empty root holding the share at /share
(read-only when shared so) and the server's own binary and libraries, as
the share's owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from roost.hostagent.guestagent import TunnelStream
from roost.hostagent.procwatch import how_it_ended
from roost.hostagent.userns import SCRATCH, Bind, ConfineError, Owner, spawn_confined

CANDIDATES = ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server",
              "/usr/lib/ssh/sftp-server", "/usr/libexec/openssh/sftp-server")
# Where the share is in sftp-server's root, and so the path the guest's sshfs asks for.
SHARE_IN_ROOT = "/share"  # after the chroot into SCRATCH


def find_sftp_server() -> str | None:
    for candidate in CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("sftp-server")


@functools.cache
def runtime_files(binary: str) -> tuple[str, ...]:
    """The binary and the shared objects it loads (ldd), each a real path."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    found = [binary]
    for line in out.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            found.append(m.group(1))
    return tuple(dict.fromkeys(found))


@dataclass(frozen=True)
class Grant:
    location: str
    writable: bool
    mount_point: str = ""  # the share's, for telling of its server's end


class SftpGrants:
    """The shares the host agent has agreed to serve, by one-time token;
    `ended` learns how each server that served one ended (a killed one
    leaves its share dead)."""

    def __init__(self, ended: Callable[[Grant, str], None] | None = None) -> None:
        self._grants: dict[str, Grant] = {}
        self._ended = ended

    def grant(self, location: str, writable: bool, mount_point: str = "") -> str:
        token = secrets.token_urlsafe(24)
        self._grants[token] = Grant(location, writable, mount_point)
        return token

    def revoke(self, token: str) -> None:
        self._grants.pop(token, None)

    def take(self, token: object) -> Grant | None:
        if not isinstance(token, str):
            return None
        return self._grants.pop(token, None)

    async def serve_guest_stream(self, event: dict[str, Any], stream: TunnelStream) -> None:
        """A stream the guest opened that is no reverse port forward: a
        reverse sshfs with its token, or nothing the host serves."""
        if event.get("path") != "sftp":
            await stream.reset(f"nothing on the host serves {str(event.get('path'))[:100]!r}")
            return
        grant = self.take(event.get("token"))
        if grant is None:
            await stream.reset("no share was granted for this token")
            return
        returncode = await serve_sftp(stream, grant)
        if returncode != 0 and self._ended is not None:
            self._ended(grant, how_it_ended(returncode))


async def start_sftp_server(binary: str, grant: Grant) -> asyncio.subprocess.Process:
    """sftp-server for `grant`, confined (see the module's doc), on pipes."""
    argv = [binary, "-d", SHARE_IN_ROOT, "-e", "-l", "ERROR"]
    if not grant.writable:
        argv.append("-R")
    binds = [Bind(grant.location, SHARE_IN_ROOT, not grant.writable)]
    binds += [Bind(path, path, True) for path in (*runtime_files(binary), "/dev/null")]
    binds = [Bind(b.source, SCRATCH + b.target, b.readonly) for b in binds]
    owner = Owner.of_share(grant.location)
    # sftp-server refuses to run for a uid with no passwd entry.
    accounts = {f"{SCRATCH}/etc/passwd": f"share:x:{owner.uid}:{owner.gid}::{SHARE_IN_ROOT}:/\n",
                f"{SCRATCH}/etc/group": f"share:x:{owner.gid}:\n"}
    return await spawn_confined(
        argv, binds, owner, chroot=True, chdir=SHARE_IN_ROOT, files=accounts,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)


async def serve_sftp(stream: TunnelStream, grant: Grant) -> int | None:
    """Serve the stream until either side ends; sftp-server's exit status
    (None: it never ran). It ends with status 0 when the guest's sshfs goes
    (an unmount); a signal or an error status means it died under the share."""
    binary = find_sftp_server()
    if binary is None:
        await stream.reset("no sftp-server on the host (Debian: openssh-sftp-server)")
        return None
    try:
        proc = await start_sftp_server(binary, grant)
    except (ConfineError, OSError) as e:
        await stream.reset(f"sftp-server could not be confined: {e}")
        return None
    assert proc.stdin is not None and proc.stdout is not None
    ended_first: int | None = None
    try:
        await stream.splice(proc.stdout, proc.stdin)
    finally:
        ended_first = proc.returncode
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        await proc.wait()
    # Terminated here because the stream ended first is no death under the share.
    return 0 if ended_first is None and proc.returncode == -15 else proc.returncode
