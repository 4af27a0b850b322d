"""Reverse sshfs, host side: sftp-server for a guest's sshfs, over a stream.

The guest agent runs `sshfs -o passive` with its stdin/stdout on a stream
it opens to the host; here that stream is joined to a local sftp-server
process. No port is opened on the host and no SSH login is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from typing import Any

from roost.hostagent.guestagent import TunnelStream

CANDIDATES = ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server",
              "/usr/lib/ssh/sftp-server", "/usr/libexec/openssh/sftp-server")


def find_sftp_server() -> str | None:
    for candidate in CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("sftp-server")


async def serve_guest_stream(event: dict[str, Any], stream: TunnelStream) -> None:
    """A stream the guest opened that is no reverse port forward: a reverse
    sshfs asking for its share ("sftp:/path"), or nothing the host serves."""
    path = str(event.get("path", ""))
    if path.startswith("sftp:/"):
        await serve_sftp(stream, path[len("sftp:"):], bool(event.get("readonly")))
    else:
        await stream.reset(f"nothing on the host serves {path!r}")


async def serve_sftp(stream: TunnelStream, location: str, readonly: bool) -> None:
    binary = find_sftp_server()
    if binary is None:
        await stream.reset("no sftp-server on the host (Debian: openssh-sftp-server)")
        return
    argv = [binary, "-d", location, "-e", "-l", "ERROR"]
    if readonly:
        argv.append("-R")
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        await stream.splice(proc.stdout, proc.stdin)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        await proc.wait()
