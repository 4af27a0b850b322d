"""Instances: create, stop, delete, clone, rename, factory-reset, protect,
suspend, and the ssh command line of a shell.

Each returns what it did (or raises a typed RoostError) and prints
nothing: the CLI and the SDK say it their own way. Waits that a person
watches report through `on_progress`.

The CLI never speaks QMP: a running instance is stopped by signalling its
host agent, which shuts the VM down in order. Only when the host agent is
gone (a Broken instance) does the CLI signal QEMU itself, by a pid it has
verified belongs to this instance.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from roost.errors import AlreadyExists, RoostError, WrongState
from roost.sshutil.config import control_argv
from roost.store.instance import (
    Instance,
    Status,
    create_instance_dir,
    operation_lock,
    pid_running,
)
from roost.store.sparse import copy_sparse

HOSTAGENT_KILL_SECONDS = 5.0

Notify = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


class Stopped(StrEnum):
    """What `stop` did."""

    STOPPED = "stopped"
    NOT_RUNNING = "not running"
    STATE_DROPPED = "stopped (its saved state dropped)"


@dataclass(frozen=True)
class Suspended:
    seconds: float  # the whole suspend, as the caller waited
    save_seconds: float  # writing the VM's state
    detached_mounts: list[str]  # shared folders that come back on resume


def create(name: str, config_file: str | None, *, template: str | None = None,
           sets: Sequence[str] = (), **options: Any) -> Instance:
    """Create NAME from a template or config file, the --cpus/--memory/--disk
    `options` and `--set`s; nothing is written unless all of it is valid."""
    from roost.config.compose import compose
    from roost.config.loader import dump_config

    inst = Instance.at(name)
    inst.check_socket_paths()
    config = compose(template, config_file, options, sets)
    with operation_lock(name, "create it"):
        create_instance_dir(inst, {"roost.yaml": dump_config(config)})
    return inst


FORCE_STOP_SECONDS = 15.0


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _close_ssh_master(inst: Instance) -> None:
    if inst.ssh_sock.exists() and inst.ssh_config.exists():
        subprocess.run(
            control_argv(inst, "exit"),
            stdin=subprocess.DEVNULL, capture_output=True, timeout=10, check=False,
        )


def stop(name: str, force: bool = False, timeout: float = 90.0,
         on_progress: Notify = _quiet) -> Stopped:
    """Stop NAME: its host agent shuts the guest down (--force: powers it off)."""
    inst = Instance.at(name).require()
    if inst.status() == Status.SUSPENDED:
        if not force:
            raise WrongState(f"{name} is suspended (not running); `roost resume {name}` brings "
                             f"it back, `roost stop --force {name}` drops its saved state and "
                             "keeps its disk", Status.SUSPENDED.value)
        with operation_lock(name, "discard its saved state"):
            # The guest as if it lost power at the suspend: its disk as it was then.
            inst.drop_saved_state()
            inst.ram_file.unlink(missing_ok=True)
        return Stopped.STATE_DROPPED
    if inst.status() == Status.STOPPED:
        inst.remove_stale_runtime_files()
        return Stopped.NOT_RUNNING
    ha_pid = inst.hostagent_pid()
    if ha_pid is not None:
        # The host agent stops what it started (QEMU, virtiofsd) and reaps it;
        # --force only skips the guest's orderly shutdown. A host agent that
        # does not answer is killed below.
        if force:
            on_progress(f"stopping {name} (no guest shutdown)...")
            _signal(ha_pid, signal.SIGUSR1)
            timeout = min(timeout, FORCE_STOP_SECONDS)
        else:
            on_progress(f"stopping {name} (shutting the guest down)...")
            _signal(ha_pid, signal.SIGTERM)
        if not _wait(lambda: not inst.hostagent_alive(), timeout):
            on_progress(f"{name} did not stop within {timeout:g}s; killing it")
            force = True
    if inst.hostagent_alive():
        pid = inst.hostagent_pid()
        if pid is not None:
            _signal(pid, signal.SIGKILL)
        _wait(lambda: not inst.hostagent_alive(), HOSTAGENT_KILL_SECONDS)
    qemu_pid = inst.qemu_pid_alive()
    if qemu_pid is not None:
        # The host agent is gone (Broken, or just killed): end QEMU ourselves.
        if not force:
            _signal(qemu_pid, signal.SIGTERM)
            _wait(lambda: not pid_running(qemu_pid), 10.0)
        if pid_running(qemu_pid):
            _signal(qemu_pid, signal.SIGKILL)
            _wait(lambda: not pid_running(qemu_pid), 10.0)
        if pid_running(qemu_pid):
            raise RoostError(f"QEMU (pid {qemu_pid}) of {name} did not exit")
    _close_ssh_master(inst)
    inst.remove_stale_runtime_files()
    return Stopped.STOPPED


@contextlib.contextmanager
def _stopped_to_new_name(old: str, new: str, verb: str, done: str
                         ) -> Iterator[tuple[Instance, Instance]]:
    """Instance `old`, stopped, and `new`, a name no instance has, both
    locked: what clone and rename start from."""
    inst = Instance.at(old).require()
    target = Instance.at(new)
    if target.dir.exists() or target.dir.is_symlink():
        raise AlreadyExists(f"an instance named {new!r} exists already; pick another name",
                            usage=True)
    with operation_lock(old, f"{verb} it"), operation_lock(new, "create it"):
        status = inst.status()
        if status != Status.STOPPED:
            raise WrongState(f"instance {old!r} is {status.value.lower()}; only a stopped "
                             f"instance is {done}: `roost stop {old}` first", status.value)
        yield inst, target


CLONED_FILES = ("image.json",)  # beside roost.yaml and the disk; the rest is per instance


def clone(old: str, new: str) -> Instance:
    """A new instance from a stopped one: its roost.yaml, and its disk as a
    copy (reflinked where the file system can). Everything that names the
    machine is new: instance-id (cloud-init runs its per-instance steps
    again), SSH host keys, MAC address, host name; the disk's snapshots are
    not copied."""
    Instance.at(new).check_socket_paths()
    with _stopped_to_new_name(old, new, "clone", "cloned") as (inst, target):

        def fill(tmp: Path) -> None:
            for filename in CLONED_FILES:
                if inst.path(filename).exists():
                    shutil.copy2(inst.path(filename), tmp / filename)
            if inst.disk.exists():
                copy_disk(inst.disk, tmp / inst.disk.name)

        create_instance_dir(target, {"roost.yaml": inst.config.read_text()}, fill)
    return target


def copy_disk(src: Path, dst: Path) -> None:
    """A qcow2 disk copied (its backing file shared, read-only), without its
    internal snapshots: they hold the other machine's state."""
    copy_sparse(src, dst)
    drop_snapshots(dst)


def drop_snapshots(disk: Path, keep: str | None = None) -> None:
    """The internal snapshots of a disk just copied, but `keep`, deleted."""
    info = subprocess.run(["qemu-img", "info", "--output=json", "-U", str(disk)],
                          capture_output=True, text=True, check=False)
    if info.returncode != 0:
        raise RoostError(f"{disk} is not a disk qemu-img can read: {info.stderr.strip()}")
    for snap in json.loads(info.stdout).get("snapshots") or []:
        if snap["name"] == keep:
            continue
        drop = subprocess.run(["qemu-img", "snapshot", "-d", str(snap["name"]), str(disk)],
                              capture_output=True, text=True, check=False)
        if drop.returncode != 0:
            raise RoostError(f"cannot drop snapshot {snap['name']!r} from the copied disk "
                             f"{disk}: {drop.stderr.strip()}")


KEPT_BY_FACTORY_RESET = ("roost.yaml", "protected")


def factory_reset(name: str) -> list[str]:
    """A stopped instance as if just created: its disk (and with it all it
    had written, snapshots too), machine identity, saved state and logs go;
    roost.yaml stays. The removed file names."""
    inst = Instance.at(name).require()
    with operation_lock(name, "reset it"):
        status = inst.status()
        if status not in (Status.STOPPED, Status.SUSPENDED):
            raise WrongState(f"instance {name!r} is {status.value.lower()}; `roost stop {name}` "
                             "first", status.value)
        if inst.protected.exists():
            raise RoostError(f"instance {name!r} is protected; `roost unprotect {name}` first")
        removed = []
        for entry in sorted(inst.dir.iterdir()):
            if entry.name in KEPT_BY_FACTORY_RESET:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry.name)
        return removed


def rename(old: str, new: str) -> None:
    """A stopped instance under a new name (its directory moves; ssh.config
    and the guest's host name follow at its next start)."""
    with _stopped_to_new_name(old, new, "rename", "renamed") as (inst, target):
        if inst.protected.exists():
            raise RoostError(f"instance {old!r} is protected; `roost unprotect {old}` first")
        os.rename(inst.dir, target.dir)  # one directory, one file system: all or nothing


def set_protected(name: str, protected: bool) -> None:
    inst = Instance.at(name).require()
    if protected:
        inst.protected.touch()
    else:
        inst.protected.unlink(missing_ok=True)


def delete(name: str, force: bool = False, on_progress: Notify = _quiet) -> bool:
    """Delete NAME and its disk; whether it had to be stopped first (--force)."""
    inst = Instance.at(name).require()
    if inst.protected.exists():
        raise RoostError(f"instance {name!r} is protected; `roost unprotect {name}` first "
                         "(--force does not override it)")
    stopped = False
    with operation_lock(name, "delete it"):
        status = inst.status()
        if status not in (Status.STOPPED, Status.SUSPENDED):
            if not force:
                raise WrongState(
                    f"instance {name!r} is {status.value.lower()}; stop it first "
                    f"(`roost stop {name}`) or delete with --force", status.value
                )
            stopped = stop(name, force=True, on_progress=on_progress) == Stopped.STOPPED
        shutil.rmtree(inst.dir)
        # A suspended instance held its disks: they are free now.
        from roost.store.disks import list_disks

        for disk in list_disks():
            disk.release(name)
    return stopped


def shell_argv(name: str, command: Sequence[str], workdir: str | None = None,
               tty: bool = False) -> list[str]:
    """The OpenSSH command line that opens a shell in NAME (or runs `command`)."""
    from roost.sshutil.config import ssh_argv

    inst = Instance.at(name).require().require_ssh(f"start it with `roost start {name}`")
    if shutil.which("ssh") is None:
        raise RoostError("the OpenSSH client (ssh) was not found; install openssh-client")
    return ssh_argv(inst, list(command), tty=tty, workdir=workdir)


def suspend(name: str, timeout: float = 300.0) -> Suspended:
    """Save NAME's VM state to disk and stop it; `start` (or resume) brings it back."""
    from roost.ops import hostapi

    inst = Instance.at(name).require_running()
    started = time.monotonic()
    result = hostapi.request(inst.ha_sock, "POST", "/v1/suspend", timeout=timeout)
    _wait(lambda: not inst.hostagent_alive(), 60.0)
    return Suspended(seconds=time.monotonic() - started,
                     save_seconds=float(result["saveSeconds"]),
                     detached_mounts=list(result.get("detachedMounts") or []))
