"""`roost start`: prepare, spawn the host agent, follow its events."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from roost.cli.deadline import Deadline
from roost.cli.progress import Progress
from roost.errors import RoostError, UsageError
from roost.store import logfile
from roost.store.instance import Instance, Status, operation_lock

POLL_SECONDS = 0.02
SPAWN_SECONDS = 30.0
# The host agent's readiness ends this long before the start's deadline, so
# its verdict (which requirement, what it last saw) reaches us in time.
AGENT_MARGIN = 1.0


def spawn_hostagent(inst: Instance, deadline: Deadline | None = None) -> subprocess.Popen[bytes]:
    """The host agent runs detached: own session, output to the instance's logs."""
    from roost.hostagent.requirements import START_DEADLINE_ENV

    for log in (inst.ha_stdout, inst.ha_stderr):
        logfile.start_afresh(log)
    env = dict(os.environ)
    if deadline is not None:
        env[START_DEADLINE_ENV] = repr(deadline.at - min(AGENT_MARGIN, deadline.seconds / 10))
    with open(inst.ha_stdout, "wb") as out, open(inst.ha_stderr, "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "roost.hostagent", inst.name],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd="/",
            start_new_session=True, close_fds=True, env=env,
        )


class EventFollower:
    """Reads whole JSON lines appended to ha.stdout.log (across its rotation)."""

    def __init__(self, path: Path) -> None:
        self._log = logfile.Follower(path)
        self._partial = b""

    def close(self) -> None:
        self._log.close()

    def poll(self) -> list[dict[str, Any]]:
        data = self._log.read()
        if not data:
            return []
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events


def _tail(path: Path, n: int = 15) -> str:
    try:
        data, _ = logfile.tail(path, n)
    except OSError:
        return ""
    return "\n".join(f"    {line}" for line in data.decode(errors="replace").splitlines())


def _report_failure(inst: Instance, status: dict[str, Any], reason: str) -> None:
    click.echo(f"roost: error: {inst.name}: {reason}", err=True)
    if status.get("errorsDropped"):
        click.echo(f"  ({status['errorsDropped']} older errors not kept)", err=True)
    for err in status.get("errors", []):
        click.echo(f"  - {err}", err=True)
    for path in (inst.ha_stderr, inst.serial_log, inst.qemu_log):
        tail = _tail(path)
        if tail:
            click.echo(f"  last lines of {path}:\n{tail}", err=True)


def follow(inst: Instance, proc: subprocess.Popen[bytes], deadline: Deadline,
           progress: Progress) -> int:
    with contextlib.closing(EventFollower(inst.ha_stdout)) as follower:
        return _follow_events(inst, proc, deadline, progress, follower)


def _follow_events(inst: Instance, proc: subprocess.Popen[bytes], deadline: Deadline,
                   progress: Progress, follower: EventFollower) -> int:
    status: dict[str, Any] = {}
    while True:
        for event in follower.poll():
            status = event.get("status", {})
            cloud_init = status.get("cloudInitProgress") or {}
            if cloud_init.get("active") and cloud_init.get("logLine"):
                progress.step(f"cloud-init: {cloud_init['logLine']}")
            elif status.get("phase"):
                progress.step(str(status["phase"]))
            if status.get("running"):
                return _ready(inst, status)
            if status.get("exiting"):
                _wait_exit(proc)
                _report_failure(inst, status, "the host agent stopped while starting")
                return 1
        if proc.poll() is not None:
            for event in follower.poll():
                status = event.get("status", status)
            _report_failure(inst, status, f"the host agent exited with status {proc.returncode}")
            return 1
        if deadline.expired():
            phase = status.get("phase") or "starting the host agent"
            _report_failure(inst, status, deadline.message(f"while {phase}") +
                            f"; the host agent goes on in the background "
                            f"(`roost stop {inst.name}` ends it)")
            return 1
        time.sleep(POLL_SECONDS)


def _wait_exit(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=120)


def _ready(inst: Instance, status: dict[str, Any]) -> int:
    failed = [r for r in status.get("requirements", []) if not r.get("ok")]
    for r in failed:
        click.echo(f"roost: warning: {r['kind']} requirement failed: {r.get('error')}\n"
                   f"  hint: {r.get('hint')}", err=True)
    essential = [r for r in failed if r["kind"] == "essential"]
    if essential:
        _report_failure(inst, status, "the instance is up but not usable "
                                      f"(`roost stop {inst.name}` stops it)")
        return 1
    port = status.get("sshLocalPort")
    state = "running (degraded)" if failed else "running"
    click.echo(f"{inst.name} is {state}; ssh port {port}. Try `roost shell {inst.name}`.")
    return 0


def _creation_flags(config_file: str | None, template: str | None,
                    sets: Sequence[str]) -> str:
    given = [flag for flag, value in (("--config", config_file), ("--template", template),
                                      ("--set", sets)) if value]
    return "/".join(given)


def start(name: str, config_file: str | None, timeout: float, *,
          template: str | None = None, sets: Sequence[str] = ()) -> int:
    """Everything, image and disk included, within `timeout` seconds."""
    deadline = Deadline(timeout)
    inst = Instance.at(name)
    inst.check_socket_paths()
    if not inst.exists():
        from roost.cli import lifecycle

        with deadline.bounding("while creating the instance"):
            lifecycle.create(name, config_file, template=template, sets=sets)
    elif flags := _creation_flags(config_file, template, sets):
        raise UsageError(f"instance {name!r} already exists; {flags} applies only when "
                         f"creating (edit {inst.config} or delete and recreate)")
    with Progress(f"starting {name}") as progress:
        with operation_lock(name, "start it"):
            status = inst.status()
            if status in (Status.RUNNING, Status.STARTING):
                raise RoostError(f"instance {name!r} is already {status.value.lower()}")
            if status == Status.BROKEN:
                # The VM runs without its host agent: a new one takes it over.
                progress.step("reattaching to the running VM")
            elif status == Status.SUSPENDED:
                progress.step("resuming from the saved state")
            else:
                # Imported here: pydantic alone is ~0.2 s a resume need not pay.
                from roost.config.loader import load_config
                from roost.image.disk import prepare_disk

                config = load_config(inst.config)  # validated before anything starts
                inst.remove_stale_runtime_files()
                with deadline.bounding("while preparing the image and the instance disk",
                                       lambda: progress.last_step):
                    prepare_disk(inst, config, progress.step, progress.download)
            progress.step("starting the host agent")
            proc = spawn_hostagent(inst, deadline)
            spawned_by = time.monotonic() + min(SPAWN_SECONDS, deadline.remaining())
            while not inst.hostagent_alive() and proc.poll() is None:
                if time.monotonic() > spawned_by:
                    break
                time.sleep(0.005)
        return follow(inst, proc, deadline, progress)


