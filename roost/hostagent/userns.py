"""Daemons that serve a share, confined to it on the host.

virtiofsd and sftp-server act for the guest, and guest root is not
trusted. Each runs in a user and a mount namespace of its own
(roost.hostagent.nsexec does the inside):

* as the share's owner, whose uid and gid are the only ones mapped in
  that namespace: a file the guest creates is the owner's, a chown to any
  other uid fails, and files the owner could not touch stay untouchable
  (virtiofsd keeps the namespace's capabilities, which reach no further);
* seeing the share read-only when the user shared it read-only (a bind
  mount remounted ro: guest root remounting its own mount rw changes
  nothing here);
* for sftp-server, on an empty root that holds only the share and the
  server's own binary and libraries, so no path the guest sends, `..` or
  a symlink, leaves it.

The id maps are written from outside: directly when the host agent is
root, else by the setuid newuidmap/newgidmap (uidmap), which also allow
setgroups, as virtiofsd needs, when the user has a subordinate gid range.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from roost.errors import RoostError

MAP_SECONDS = 5.0
# A tmpfs over it inside the namespace holds the share: the daemon reaches it
# by a path of its own, whatever directories above the share it may not enter.
SCRATCH = "/tmp"
# Run as a file (python -I -S): the standard library is all it imports.
NSEXEC = Path(__file__).with_name("nsexec.py")


class ConfineError(RoostError):
    pass


@dataclass(frozen=True)
class Owner:
    """Whom the confined process is outside its namespace."""

    uid: int
    gid: int

    @classmethod
    def of_share(cls, location: str) -> Owner:
        """Root serves a share as the share's owner; anyone else as themselves."""
        if os.geteuid() == 0:
            st = os.stat(location)
            return cls(st.st_uid, st.st_gid)
        return cls(os.geteuid(), os.getegid())


@dataclass(frozen=True)
class Bind:
    source: str
    target: str
    readonly: bool


def subordinate_gid(user: str, path: Path = Path("/etc/subgid")) -> int | None:
    """The first gid of the user's subordinate range, if they have one."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] == user and parts[2].isdigit() and int(parts[2]) > 0:
            return int(parts[1])
    return None


def setgroups_problem() -> str | None:
    """Why this user cannot give a confined process setgroups (virtiofsd's
    need), or None when they can."""
    if os.geteuid() == 0:
        return None
    user = pwd.getpwuid(os.geteuid()).pw_name
    missing = [t for t in ("newuidmap", "newgidmap") if not _tool(t)]
    if missing:
        return f"{' and '.join(missing)} not found (Debian: the uidmap package)"
    if subordinate_gid(user) is None:
        return (f"{user} has no subordinate gid range in /etc/subgid "
                f"(`usermod --add-subgids 100000-165535 {user}` as root)")
    return None


def _tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/bin/{name}") if os.access(p, os.X_OK)), None)


def _write_maps(pid: int, owner: Owner, setgroups: bool) -> None:
    """The owner's ids mapped to themselves, so the guest sees the share's
    files as the owner's (the guest user has the host user's uid)."""
    if os.geteuid() == 0 or not setgroups:
        if os.geteuid() != 0:  # an unprivileged process may map itself, setgroups denied
            Path(f"/proc/{pid}/setgroups").write_text("deny\n")
        Path(f"/proc/{pid}/uid_map").write_text(f"{owner.uid} {owner.uid} 1\n")
        Path(f"/proc/{pid}/gid_map").write_text(f"{owner.gid} {owner.gid} 1\n")
        return
    problem = setgroups_problem()
    if problem:
        raise ConfineError(problem)
    user = pwd.getpwuid(os.geteuid()).pw_name
    sub = subordinate_gid(user)
    # One subordinate gid beside the user's own is what makes newgidmap
    # allow setgroups; nothing in the share can be given to it but by chgrp.
    spare = 0 if owner.gid != 0 else 1  # an inside gid that is not the owner's
    for argv in ([_tool("newuidmap"), str(pid), str(owner.uid), str(owner.uid), "1"],
                 [_tool("newgidmap"), str(pid), str(owner.gid), str(owner.gid), "1",
                  str(spare), str(sub), "1"]):
        done = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfineError(f"{Path(str(argv[0])).name} failed: {done.stderr.strip()}")


async def spawn_confined(argv: list[str], binds: list[Bind], owner: Owner, *,
                         chroot: bool, chdir: str = "/", setgroups: bool = False,
                         capabilities: bool = False, files: dict[str, str] | None = None,
                         stdin: int | IO[bytes] | None = subprocess.DEVNULL,
                         stdout: int | IO[bytes] | None = None,
                         stderr: int | IO[bytes] | None = None,
                         pass_fds: tuple[int, ...] = (),
                         env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    """Start `argv` confined as the module says; the process is `argv[0]`
    itself (nsexec execs it), a child of ours to reap. Bind targets under
    SCRATCH are made on a fresh tmpfs there, and `files` written there; with
    `chroot` that is the root."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    spec = {"argv": argv, "binds": [[b.source, b.target, b.readonly] for b in binds],
            "scratch": SCRATCH, "chroot": chroot, "chdir": chdir, "uid": owner.uid,
            "gid": owner.gid, "keepCaps": capabilities, "files": files or {},
            "ready": ready_w, "go": go_r}
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", str(NSEXEC), json.dumps(spec),
            stdin=stdin, stdout=stdout, stderr=stderr, start_new_session=True,
            pass_fds=(ready_w, go_r, *pass_fds), env=env or {})
    finally:
        os.close(ready_w)
        os.close(go_r)
    try:
        loop = asyncio.get_running_loop()
        got = await asyncio.wait_for(loop.run_in_executor(None, os.read, ready_r, 1),
                                     MAP_SECONDS)
        if got != b"1":
            await proc.wait()
            raise ConfineError(f"could not make a user namespace for {Path(argv[0]).name} "
                               f"(exit {proc.returncode}; see its log)")
        _write_maps(proc.pid, owner, setgroups)
        os.write(go_w, b"1")
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    finally:
        os.close(ready_r)
        os.close(go_w)
    return proc
