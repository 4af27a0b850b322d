"""create, stop, delete and shell.

The CLI never speaks QMP: a running instance is stopped by signalling its
host agent, which shuts the VM down in order. Only when the host agent is
gone (a Broken instance) does the CLI signal QEMU itself, by a pid it has
verified belongs to this instance.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import click

from roost.errors import RoostError
from roost.sshutil.config import control_argv
from roost.store.instance import (
    Instance,
    Status,
    create_instance_dir,
    operation_lock,
    pid_running,
)

HOSTAGENT_KILL_SECONDS = 5.0


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


def stop(name: str, force: bool = False, timeout: float = 90.0) -> None:
    inst = Instance.at(name).require()
    if inst.status() == Status.SUSPENDED:
        if not force:
            raise RoostError(f"{name} is suspended (not running); `roost resume {name}` brings "
                             f"it back, `roost stop --force {name}` drops its saved state and "
                             "keeps its disk")
        with operation_lock(name, "discard its saved state"):
            # The guest as if it lost power at the suspend: its disk as it was then.
            inst.drop_saved_state()
            inst.ram_file.unlink(missing_ok=True)
        click.echo(f"{name} stopped (its saved state dropped)")
        return
    if inst.status() == Status.STOPPED:
        inst.remove_stale_runtime_files()
        click.echo(f"{name} is not running")
        return
    ha_pid = inst.hostagent_pid()
    if ha_pid is not None:
        # The host agent stops what it started (QEMU, virtiofsd) and reaps it;
        # --force only skips the guest's orderly shutdown. A host agent that
        # does not answer is killed below.
        if force:
            click.echo(f"stopping {name} (no guest shutdown)...", err=True)
            _signal(ha_pid, signal.SIGUSR1)
            timeout = min(timeout, FORCE_STOP_SECONDS)
        else:
            click.echo(f"stopping {name} (shutting the guest down)...", err=True)
            _signal(ha_pid, signal.SIGTERM)
        if not _wait(lambda: not inst.hostagent_alive(), timeout):
            click.echo(f"{name} did not stop within {timeout:g}s; killing it", err=True)
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
    click.echo(f"{name} stopped")


def delete(name: str, force: bool = False) -> None:
    inst = Instance.at(name).require()
    with operation_lock(name, "delete it"):
        status = inst.status()
        if status not in (Status.STOPPED, Status.SUSPENDED):
            if not force:
                raise RoostError(
                    f"instance {name!r} is {status.value.lower()}; stop it first "
                    f"(`roost stop {name}`) or delete with --force"
                )
            stop(name, force=True)
        shutil.rmtree(inst.dir)


def shell(name: str, command: list[str]) -> None:
    from roost.sshutil.config import ssh_argv

    inst = Instance.at(name).require()
    status = inst.status()
    if status != Status.RUNNING:
        raise RoostError(f"instance {name!r} is {status.value.lower()}; "
                         f"start it with `roost start {name}`")
    if not inst.ssh_config.exists():
        raise RoostError(f"{inst.ssh_config} is missing; restart the instance")
    if shutil.which("ssh") is None:
        raise RoostError("the OpenSSH client (ssh) was not found; install openssh-client")
    tty = sys.stdin.isatty() and sys.stdout.isatty()
    argv = ssh_argv(inst, command, tty=tty)
    sys.stdout.flush()
    os.execvp(argv[0], argv)


def suspend(name: str, timeout: float = 300.0) -> None:
    from roost.cli import haclient

    inst = Instance.at(name).require_running()
    started = time.monotonic()
    result = haclient.request(inst.ha_sock, "POST", "/v1/suspend", timeout=timeout)
    _wait(lambda: not inst.hostagent_alive(), 60.0)
    detached = result.get("detachedMounts") or []
    note = f"; shared folders {', '.join(detached)} come back on resume" if detached else ""
    click.echo(f"{name} suspended in {time.monotonic() - started:.2f}s "
               f"(state saved in {result['saveSeconds']}s){note}")
