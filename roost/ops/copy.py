"""`roost copy` (`cp`): files between the host and instances, and between
instances, through the system's OpenSSH (scp) or rsync over it.

A location is `NAME:PATH` in an instance (PATH relative to the guest
user's home) or a host path; `./a:b` is the host path `a:b`. A trailing
slash means what it means to cp(1), whichever tool runs: nothing.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from roost.errors import RoostError, UsageError
from roost.sshutil.config import host_alias
from roost.store.instance import NAME_RE, Instance

Backend = Literal["auto", "scp", "rsync"]


@dataclass(frozen=True)
class Location:
    path: str
    instance: str | None = None  # None: on the host

    def spec(self) -> str:
        """How scp and rsync name it."""
        if self.instance is None:
            return self.path
        return f"{host_alias(self.instance)}:{self.path}"


def parse_location(arg: str) -> Location:
    if not arg:
        raise UsageError("an empty path; give a host path or NAME:PATH")
    name, colon, path = arg.partition(":")
    if not colon or "/" in name or not name:
        return Location(arg)
    if not NAME_RE.fullmatch(name):
        raise UsageError(f"{arg!r}: {name!r} is not an instance name; for a host path "
                         f"with a colon, write ./{arg}")
    return Location(path, name)


@dataclass(frozen=True)
class CopyPlan:
    argv: list[str]
    ssh_config: str  # the file every ssh it runs reads


def _running(name: str) -> Instance:
    inst = Instance.at(name)
    if not inst.exists():
        raise UsageError(f"no instance named {name!r} (`roost ls` lists them; for a host "
                         f"path with a colon, write ./{name}:...)")
    return inst.require_ssh(f"copying needs it running: `roost start {name}`")


def _strip_slash(path: str) -> str:
    stripped = path.rstrip("/")
    return stripped or path  # "/" stays "/"


def plan(sources: Sequence[Location], dest: Location, *, recursive: bool, verbose: bool,
         backend: Backend, ssh_config: str, rsync_ok: bool,
         dest_exists: bool) -> CopyPlan:
    """The command that copies `sources` to `dest`. `rsync_ok`: rsync runs on
    both ends; `dest_exists`: the destination is there already (rsync needs
    telling what cp would do then)."""
    if not sources:
        raise UsageError("give at least one source and a destination")
    names = {loc.instance for loc in [*sources, dest] if loc.instance is not None}
    if not names:
        raise UsageError("neither side is in an instance (write NAME:PATH for one); "
                         "use cp(1) between host paths")
    # Both ends in instances (the same one or two): scp -3, through the host.
    between_guests = dest.instance is not None and any(s.instance is not None for s in sources)
    if backend == "rsync" and between_guests:
        raise UsageError("rsync cannot copy from one instance to another; "
                         "use --backend scp (or auto)")
    if backend == "rsync" and not rsync_ok:
        raise UsageError("--backend rsync needs rsync on the host and in the instance; "
                         "use --backend scp (or auto)")
    if backend == "scp" or between_guests or not rsync_ok:
        argv = ["scp", "-F", ssh_config]
        if between_guests:
            argv.append("-3")  # a guest cannot reach the other's forwarded port
        if recursive:
            argv.append("-r")
        if verbose:
            argv.append("-v")
        return CopyPlan([*argv, "--", *(s.spec() for s in sources), dest.spec()],
                        ssh_config)
    # rsync: a source's trailing slash would mean "its contents"; as cp, the
    # copy of one directory to a new name is that name, into an existing
    # directory it goes inside.
    specs = [Location(_strip_slash(s.path), s.instance).spec() for s in sources]
    if len(specs) == 1 and recursive and not dest_exists:
        specs = [specs[0] + "/"]
    argv = ["rsync", "-e", f"ssh -F {shlex.quote(ssh_config)}", "--protect-args",
            "--links", "--perms", "--times"]
    if recursive:
        argv.append("--recursive")
    if verbose:
        argv.append("--verbose")
    return CopyPlan([*argv, "--", *specs, dest.spec()], ssh_config)


def _ssh_ok(inst: Instance, command: str) -> bool:
    argv = ["ssh", "-F", str(inst.ssh_config), host_alias(inst.name), "--", command]
    return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=60, check=False).returncode == 0


def copy(args: Sequence[str], *, recursive: bool, verbose: bool, backend: Backend) -> int:
    """Run the copy; its exit status."""
    if len(args) < 2:
        raise UsageError("give one or more sources and a destination, e.g. "
                         "roost copy ./notes.txt NAME:/tmp/")
    locations = [parse_location(a) for a in args]
    sources, dest = locations[:-1], locations[-1]
    instances = {loc.instance: _running(loc.instance)
                 for loc in locations if loc.instance is not None}
    remote = next(iter(instances.values()), None)
    rsync_ok = False
    if backend != "scp" and len(instances) == 1 and remote is not None:
        rsync_ok = shutil.which("rsync") is not None and _ssh_ok(remote, "command -v rsync")
    dest_exists = True
    if rsync_ok and backend != "scp":
        if dest.instance is None:
            dest_exists = os.path.lexists(dest.path)
        else:
            dest_exists = _ssh_ok(instances[dest.instance],
                                  f"test -e {shlex.quote(dest.path or '.')}")
    with tempfile.TemporaryDirectory(prefix="roost-copy-") as tmp:
        config = Path(tmp) / "ssh.config"
        # One file for every instance involved: scp -3 reads a single -F.
        config.write_text("".join(f'Include "{inst.ssh_config}"\n'
                                  for inst in instances.values()))
        the_plan = plan(sources, dest, recursive=recursive, verbose=verbose, backend=backend,
                        ssh_config=str(config), rsync_ok=rsync_ok, dest_exists=dest_exists)
        if verbose:
            print(f"roost: {shlex.join(the_plan.argv)}", file=sys.stderr)
        tool = the_plan.argv[0]
        if shutil.which(tool) is None:
            raise RoostError(f"{tool} was not found on the host; install "
                             f"{'openssh-client' if tool == 'scp' else 'rsync'}")
        return subprocess.run(the_plan.argv, check=False).returncode
