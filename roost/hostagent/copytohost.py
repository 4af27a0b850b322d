"""Lima's copyToHost: guest files copied to the host after provisioning.

The guest decides only the bytes. Where they land is the host path the
user wrote, resolved on the host: its variables expanded, the file written
beside its final name and renamed over it, never through a symlink at that
name (a guest that can't choose the path can't redirect the write either).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from roost.config.model import CopyToHost
from roost.sshutil.config import guest_user, ssh_argv
from roost.store.durable import replace_durably
from roost.store.instance import Instance

COPY_TIMEOUT = 120.0


def host_path(entry: CopyToHost, inst: Instance) -> Path:
    user, uid = guest_user()  # the host user, whom the guest user mirrors
    values = {"{{.Dir}}": str(inst.dir), "{{.Home}}": str(Path.home()), "{{.Name}}": inst.name,
              "{{.User}}": user, "{{.UID}}": str(uid)}
    path = entry.host
    for var, value in values.items():
        path = path.replace(var, value)
    return Path(os.path.normpath(path))


async def _copy_one(inst: Instance, entry: CopyToHost, index: int) -> Path | None:
    where = f"copyToHost[{index}] ({entry.guest} -> {entry.host})"
    dest = host_path(entry, inst)
    if dest.is_symlink() or (dest.exists() and not dest.is_file()):
        raise OSError(f"{where}: {dest} exists and is not a regular file; not replaced")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.roost-copy")
    # `test -f` first: a missing file and a failing copy are told apart.
    script = 'if [ ! -e "$1" ]; then exit 3; fi; if [ ! -f "$1" ]; then exit 4; fi; cat -- "$1"'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *ssh_argv(inst, ["sh", "-c", script, "sh", entry.guest]),
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.PIPE)
            try:
                _, err = await asyncio.wait_for(proc.communicate(), COPY_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise OSError(f"{where}: no end after {COPY_TIMEOUT:g}s") from None
            if proc.returncode == 3:
                if entry.skip_if_missing:
                    return None
                raise OSError(f"{where}: {entry.guest} does not exist in the guest "
                              "(skipIfMissing: true allows that)")
            if proc.returncode == 4:
                raise OSError(f"{where}: {entry.guest} is not a regular file")
            if proc.returncode != 0:
                raise OSError(f"{where}: copy failed (exit {proc.returncode}): "
                              f"{err.decode(errors='replace').strip()[-300:]}")
        os.chmod(tmp, 0o644)
        replace_durably(tmp, dest)
        return dest
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


async def copy_to_host(inst: Instance, entries: list[CopyToHost],
                       on_stop: Callable[[str, Callable[[], None]], None]) -> list[str]:
    """Copy each entry; errors name the entry. deleteOnStop files get a cleanup."""
    errors = []
    for i, entry in enumerate(entries):
        try:
            dest = await _copy_one(inst, entry, i)
        except OSError as e:
            errors.append(str(e))
            continue
        if dest is not None and entry.delete_on_stop:
            on_stop(f"delete {dest} (copyToHost deleteOnStop)",
                    lambda d=dest: d.unlink(missing_ok=True))  # type: ignore[misc]
    return errors
