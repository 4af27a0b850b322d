"""Instance directories: layout, atomic creation, locks and liveness.

Liveness never trusts a pid alone: the host agent holds a lock on
`ha.lock` for its whole life, and a QEMU pid counts only while its command
line names this instance's QMP socket. Both survive pid reuse.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path

from roost.errors import (
    AlreadyExists,
    Busy,
    NotFound,
    RoostError,
    UsageError,
    WrongState,
    cut,
    quote,
)
from roost.store import agentlock
from roost.store.durable import fsync_dir, write_atomic
from roost.store.home import ensure_home, make_private_dir
from roost.store.paths import roost_home

# Not `typing`: `roost ls` imports this module, and typing costs it ~5 ms
# (mypy takes any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# sockaddr_un.sun_path is 108 bytes including the NUL.
MAX_SOCKET_PATH = 107


# suspended.json's key naming the instance a fork was made from.
FORKED_FROM = "forkedFrom"


class Status(StrEnum):
    RUNNING = "Running"
    STARTING = "Starting"
    STOPPED = "Stopped"
    BROKEN = "Broken"
    SUSPENDED = "Suspended"


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UsageError(
            f"invalid instance name {quote(name)}: use 1-63 characters of a-z, 0-9 and '-', "
            "starting with a letter or digit"
        )
    return name


class _InstanceFile:
    """A file in the instance directory, as a typed attribute: `inst.qmp_sock`."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def __get__(self, inst: Instance, owner: type | None = None) -> Path:
        return inst.dir / self.filename


class Instance:
    """An instance: its name and directory (a value; equal when both are).

    Not a dataclass: `roost ls` imports this module, and dataclasses (with
    inspect) costs it ~10 ms."""

    __slots__ = ("dir", "name")
    name: str
    dir: Path

    def __init__(self, name: str, dir: Path) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dir", dir)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"Instance is immutable: cannot set {key}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Instance) and (self.name, self.dir) == (other.name, other.dir)

    def __hash__(self) -> int:
        return hash((self.name, self.dir))

    def __repr__(self) -> str:
        return f"Instance(name={self.name!r}, dir={self.dir!r})"

    @classmethod
    def at(cls, name: str, home: Path | None = None) -> Instance:
        validate_name(name)
        return cls(name, (home or roost_home()) / name)

    def path(self, filename: str) -> Path:
        return self.dir / filename

    def snapshot_machine(self, tag: str) -> Path:
        """The machine snapshot `tag` (one with VM state) was taken on: a
        fork from the snapshot starts that machine to load it."""
        return self.dir / "snapshots" / f"{tag}.json"

    config = _InstanceFile("roost.yaml")
    disk = _InstanceFile("disk.qcow2")
    cidata = _InstanceFile("cidata.iso")
    ha_pid = _InstanceFile("ha.pid")
    ha_lock = _InstanceFile("ha.lock")
    ha_sock = _InstanceFile("ha.sock")
    ha_stdout = _InstanceFile("ha.stdout.log")
    ha_stderr = _InstanceFile("ha.stderr.log")
    qemu_pid = _InstanceFile("qemu.pid")
    qemu_log = _InstanceFile("qemu.log")
    qmp_sock = _InstanceFile("qmp.sock")
    serial_log = _InstanceFile("serial.log")
    serial_sock = _InstanceFile("serial.sock")
    ga_sock = _InstanceFile("ga.sock")
    ssh_config = _InstanceFile("ssh.config")
    ssh_sock = _InstanceFile("ssh.sock")
    known_hosts = _InstanceFile("known_hosts")
    host_key = _InstanceFile("ssh_host_ed25519_key")
    runtime = _InstanceFile("runtime.json")
    # A suspended VM: its saved state and what resume needs to rebuild it
    # (with FORKED_FROM when it is a fork's, made by roost.ops.fork).
    suspended = _InstanceFile("suspended.json")
    vmstate = _InstanceFile("vmstate.bin")
    ram_file = _InstanceFile("ram.bin")
    memory_image = _InstanceFile("vmstate.ram")  # the guest RAM saved with vmstate
    # Present while `roost delete` must refuse the instance (as Lima's).
    protected = _InstanceFile("protected")

    def cloud_instance_id(self) -> str:
        """cloud-init's instance-id: made once, kept for the instance's life."""
        path = self.path("instance-id")
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            value = f"roost-{self.name}-{os.urandom(6).hex()}"
            write_atomic(path, value + "\n")
            return value

    def exists(self) -> bool:
        return self.config.is_file()

    def require(self) -> Instance:
        if not self.exists():
            raise NotFound(f"instance {self.name!r} does not exist (see `roost ls`)")
        return self

    def sockets(self) -> list[Path]:
        return [self.ha_sock, self.qmp_sock, self.ga_sock, self.serial_sock, self.ssh_sock]

    def check_socket_paths(self) -> None:
        longest = max(self.sockets(), key=lambda p: len(str(p)))
        if len(str(longest)) > MAX_SOCKET_PATH:
            raise UsageError(
                f"{longest} is {len(str(longest))} bytes, longer than a Unix socket path may be "
                f"({MAX_SOCKET_PATH}); set ROOST_HOME to a shorter directory"
            )

    # -- liveness ---------------------------------------------------------

    def hostagent_alive(self) -> bool:
        """True while a host agent holds ha.lock (roost.store.agentlock)."""
        return agentlock.held(self.ha_lock)

    def hostagent_pid(self) -> int | None:
        return _read_pid(self.ha_pid) if self.hostagent_alive() else None

    def qemu_pid_alive(self) -> int | None:
        """QEMU's pid if a process with it runs this instance's VM."""
        pid = _read_pid(self.qemu_pid)
        if pid is None or not pid_running(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            return None
        if str(self.qmp_sock).encode() not in cmdline:
            return None
        return pid

    def status(self) -> Status:
        ha = self.hostagent_alive()
        qemu = self.qemu_pid_alive() is not None
        if ha and qemu:
            return Status.RUNNING
        if ha:
            return Status.STARTING
        if qemu:
            return Status.BROKEN
        if self.suspended.exists():
            return Status.SUSPENDED
        return Status.STOPPED

    def require_running(self) -> Instance:
        """This instance, if it exists and runs; else a clear error."""
        status = self.require().status()
        if status != Status.RUNNING:
            raise WrongState(f"instance {self.name!r} is {status.value.lower()}, not running; "
                             f"`roost start {self.name}` first", status.value)
        return self

    def require_ssh(self, not_running: str) -> Instance:
        """This instance, if it runs and has its ssh.config: what a command
        through SSH needs. `not_running` ends the error for one that does not."""
        status = self.status()
        if status != Status.RUNNING:
            raise WrongState(f"instance {self.name!r} is {status.value.lower()}; {not_running}",
                             status.value)
        if not self.ssh_config.exists():
            raise RoostError(f"{self.ssh_config} is missing; restart the instance")
        return self

    def drop_saved_state(self) -> None:
        """The saved device state is gone: a restored VM ran (the RAM file no longer
        matches it), or `stop --force` discarded it."""
        self.suspended.unlink(missing_ok=True)
        self.vmstate.unlink(missing_ok=True)
        self.memory_image.unlink(missing_ok=True)
        # One a save left half written (guestram.save writes it, then renames).
        self.path(f".{self.memory_image.name}.tmp").unlink(missing_ok=True)

    def config_digest(self) -> str:
        """Identifies roost.yaml's exact text (a resume checks it is unchanged)."""
        try:
            import hashlib  # not for `roost ls`

            return hashlib.sha256(self.config.read_bytes()).hexdigest()
        except OSError:
            return ""

    def read_runtime(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.runtime.read_text())
            return data
        except (FileNotFoundError, ValueError):
            return {}

    def read_suspended(self) -> dict[str, Any]:
        """suspended.json, what a resume rebuilds the machine from; a damaged
        one is an error saying how to drop the saved state."""
        try:
            data = json.loads(self.suspended.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise RoostError(
                f"{self.suspended} is damaged ({cut(str(e), 200)}), so the saved state cannot "
                f"be resumed; `roost stop --force {self.name}` drops it (the disk keeps what "
                "the guest had written to it) and `roost start` boots afresh") from None
        return data

    def remove_stale_runtime_files(self) -> None:
        """Sockets and pid files a dead host agent or QEMU left behind."""
        for p in [*self.sockets(), self.ha_pid, self.qemu_pid, self.runtime]:
            p.unlink(missing_ok=True)


def pid_running(pid: int) -> bool:
    """A process with this pid runs: a zombie does not count, but a zombie
    thread-group leader whose other threads are still exiting does. Those
    threads share its file table, so its fds (and the locks on them, such as
    ha.lock's) live until the last of them is gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state != "Z":
            return True
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except (OSError, IndexError):
        return False


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def list_instances(home: Path | None = None) -> list[Instance]:
    home = home or roost_home()
    try:
        entries = sorted(os.listdir(home))
    except FileNotFoundError:
        return []
    return [
        Instance(n, home / n) for n in entries
        if NAME_RE.fullmatch(n) and (home / n / "roost.yaml").is_file()
    ]


@contextmanager
def operation_lock(name: str, what: str) -> Iterator[None]:
    """Serialize create/start/delete of one instance across processes."""
    locks = make_private_dir(ensure_home() / ".locks")
    with open(locks / f"{name}.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(
                f"another roost command is already working on {name!r}; "
                f"wait for it to finish, then {what} again"
            ) from None
        yield


def create_instance_dir(inst: Instance, files: dict[str, str],
                        fill: Callable[[Path], None] | None = None) -> None:
    """Create the instance directory (0700) with `files`, and whatever `fill`
    puts in it (given the directory still being made), all or nothing, and
    on disk before it returns."""
    home = make_private_dir(inst.dir.parent)
    if inst.dir.exists():
        raise AlreadyExists(f"instance {inst.name!r} already exists in {inst.dir}")
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=f".{inst.name}.", dir=home))  # mkdtemp: 0700
    try:
        for filename, text in files.items():
            write_atomic(tmp / filename, text)
        if fill is not None:
            fill(tmp)
        os.rename(tmp, inst.dir)
        fsync_dir(home)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise AlreadyExists(f"instance {inst.name!r} already exists in {inst.dir}") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
