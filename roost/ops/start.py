"""Start an instance: spawn the host agent, prepare the disk while it
imports, follow its events to Running (or to the reason it did not get
there).

A person watching sees the phases through a StartProgress; the outcome is
a Started, or a StartFailed that carries what the host agent last reported
and the logs' last lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from roost.errors import RoostError, UsageError, WrongState
from roost.ops.deadline import Deadline
from roost.store import logfile
from roost.store.instance import Instance, Status, operation_lock

if TYPE_CHECKING:
    from roost.hostagent.handoff import GoAhead

POLL_SECONDS = 0.02
SPAWN_SECONDS = 30.0
# A host agent whose start was called off is ended (it had not begun).
CALLED_OFF_SECONDS = 10.0
# The host agent's readiness ends this long before the start's deadline, so
# its verdict (which requirement, what it last saw) reaches us in time.
AGENT_MARGIN = 1.0


class StartProgress(Protocol):
    """What a start reports as it goes (roost.cli.progress.Progress is one)."""

    @property
    def last_step(self) -> str:
        """The step shown last (a timeout names it)."""

    def step(self, message: str) -> None: ...

    def download(self, location: str, done_bytes: int, total_bytes: int | None,
                 bytes_per_sec: float) -> None: ...


class NoProgress:
    """A StartProgress for callers that show none (the SDK by default)."""

    def __init__(self) -> None:
        self._last = ""

    @property
    def last_step(self) -> str:
        return self._last

    def step(self, message: str) -> None:
        self._last = message

    def download(self, location: str, done_bytes: int, total_bytes: int | None,
                 bytes_per_sec: float) -> None:
        pass


@dataclass(frozen=True)
class Started:
    """An instance that reached Running."""

    name: str
    ssh_port: int | None
    # Requirements that failed but are not essential: the instance is degraded.
    failed_requirements: list[dict[str, Any]] = field(default_factory=list)

    @property
    def degraded(self) -> bool:
        return bool(self.failed_requirements)


class StartFailed(RoostError):
    """The instance did not reach Running: `reason`, with the host agent's
    errors and the last lines of its logs."""

    def __init__(self, inst: Instance, status: dict[str, Any], reason: str,
                 failed_requirements: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"{inst.name}: {reason}")
        self.name = inst.name
        self.reason = reason
        self.errors: list[str] = [str(e) for e in status.get("errors", [])]
        self.errors_dropped = int(status.get("errorsDropped") or 0)
        self.failed_requirements = failed_requirements or []
        self.log_tails = {str(path): tail for path in (inst.ha_stderr, inst.serial_log,
                                                       inst.qemu_log)
                          if (tail := _tail(path))}


def _clear_logs(inst: Instance) -> None:
    for log in (inst.ha_stdout, inst.ha_stderr):
        logfile.start_afresh(log)


def spawn_hostagent(inst: Instance, deadline: Deadline | None = None,
                    go_ahead: GoAhead | None = None) -> subprocess.Popen[bytes]:
    """The host agent runs detached: own session, output to the instance's
    logs. Given `go_ahead`, it waits for it before it touches the instance,
    and opens its logs itself then (its output goes to go_ahead's until)."""
    from roost.hostagent.handoff import START_DEADLINE_ENV

    env = dict(os.environ)
    if deadline is not None:
        env[START_DEADLINE_ENV] = repr(deadline.at - min(AGENT_MARGIN, deadline.seconds / 10))
    argv = [sys.executable, "-m", "roost.hostagent", inst.name]
    if go_ahead is None:
        _clear_logs(inst)
        with open(inst.ha_stdout, "wb") as out, open(inst.ha_stderr, "wb") as err:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    cwd="/", start_new_session=True, close_fds=True, env=env)
    env.update(go_ahead.child_env())
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=go_ahead.early_output,
                                stderr=subprocess.STDOUT, cwd="/", start_new_session=True,
                                close_fds=True, env=env, pass_fds=go_ahead.child_fds)
    finally:
        go_ahead.spawned()


def _prepare_beside(inst: Instance, deadline: Deadline, shown: StartProgress
                    ) -> subprocess.Popen[bytes]:
    """A stopped instance: the host agent spawned first, so that its imports
    run beside roost.yaml's validation and the disk's preparation here (on
    another core), and told to go on once those are done. If they fail, it
    is called off and ended by its pid, having changed nothing."""
    from roost.hostagent.handoff import GoAhead

    inst.remove_stale_runtime_files()  # before the new host agent writes its own
    go_ahead = GoAhead()
    try:
        proc = spawn_hostagent(inst, deadline, go_ahead)
        try:
            # Imported after the spawn: pydantic alone is ~0.2 s (and a resume
            # need not pay it at all).
            from roost.config.loader import load_config
            from roost.image.disk import prepare_disk

            config = load_config(inst.config)  # validated before anything starts
            with deadline.bounding("while preparing the image and the instance disk",
                                   lambda: shown.last_step):
                prepare_disk(inst, config, shown.step, shown.download)
        except BaseException:
            # Called off. It has touched nothing yet, so it is ended at once
            # (ours, by its pid) rather than after its imports.
            go_ahead.withdraw()
            proc.terminate()
            try:
                proc.wait(timeout=CALLED_OFF_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        _clear_logs(inst)  # the last run's: the host agent opens new ones on GO
        go_ahead.give()
        if proc.poll() is not None:  # it never got as far as its own logs
            raise StartFailed(inst, {}, f"the host agent exited with status {proc.returncode} "
                                        f"before it began: {go_ahead.early_tail().strip()}")
        return proc
    finally:
        go_ahead.close()


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
    return data.decode(errors="replace")


def follow(inst: Instance, proc: subprocess.Popen[bytes], deadline: Deadline,
           progress: StartProgress) -> Started:
    with contextlib.closing(EventFollower(inst.ha_stdout)) as follower:
        return _follow_events(inst, proc, deadline, progress, follower)


def _follow_events(inst: Instance, proc: subprocess.Popen[bytes], deadline: Deadline,
                   progress: StartProgress, follower: EventFollower) -> Started:
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
                raise StartFailed(inst, status, "the host agent stopped while starting")
        if proc.poll() is not None:
            for event in follower.poll():
                status = event.get("status", status)
            raise StartFailed(inst, status,
                              f"the host agent exited with status {proc.returncode}")
        if deadline.expired():
            phase = status.get("phase") or "starting the host agent"
            raise StartFailed(inst, status, deadline.message(f"while {phase}") +
                              f"; the host agent goes on in the background "
                              f"(`roost stop {inst.name}` ends it)")
        time.sleep(POLL_SECONDS)


def _wait_exit(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=120)


def _ready(inst: Instance, status: dict[str, Any]) -> Started:
    failed = [r for r in status.get("requirements", []) if not r.get("ok")]
    if any(r["kind"] == "essential" for r in failed):
        raise StartFailed(inst, status, "the instance is up but not usable "
                                        f"(`roost stop {inst.name}` stops it)", failed)
    port = status.get("sshLocalPort")
    return Started(inst.name, int(port) if port else None, failed)


def _creation_flags(config_file: str | None, template: str | None,
                    sets: Sequence[str]) -> str:
    given = [flag for flag, value in (("--config", config_file), ("--template", template),
                                      ("--set", sets)) if value]
    return "/".join(given)


def start(name: str, config_file: str | None = None, timeout: float = 600.0, *,
          template: str | None = None, sets: Sequence[str] = (),
          progress: StartProgress | None = None, **options: Any) -> Started:
    """Start NAME, creating it first (from `template` or `config_file`, the
    `sets` and create's `options`) when it does not exist; resume it when it
    is suspended, take it over when its VM runs without a host agent.
    Everything, image and disk included, within `timeout` seconds."""
    deadline = Deadline(timeout)
    shown: StartProgress = progress or NoProgress()
    inst = Instance.at(name)
    inst.check_socket_paths()
    if not inst.exists():
        from roost.ops import instances

        with deadline.bounding("while creating the instance"):
            instances.create(name, config_file, template=template, sets=sets, **options)
    elif flags := _creation_flags(config_file, template, sets):
        raise UsageError(f"instance {name!r} already exists; {flags} applies only when "
                         f"creating (edit {inst.config} or delete and recreate)")
    with operation_lock(name, "start it"):
        status = inst.status()
        if status in (Status.RUNNING, Status.STARTING):
            raise WrongState(f"instance {name!r} is already {status.value.lower()}",
                             status.value)
        if status == Status.BROKEN:
            # The VM runs without its host agent: a new one takes it over.
            shown.step("reattaching to the running VM")
        elif status == Status.SUSPENDED:
            shown.step("resuming from the saved state")
        if status in (Status.BROKEN, Status.SUSPENDED):
            shown.step("starting the host agent")
            proc = spawn_hostagent(inst, deadline)
        else:
            proc = _prepare_beside(inst, deadline, shown)
            shown.step("starting the host agent")
        spawned_by = time.monotonic() + min(SPAWN_SECONDS, deadline.remaining())
        while not inst.hostagent_alive() and proc.poll() is None:
            if time.monotonic() > spawned_by:
                break
            time.sleep(0.005)
    return follow(inst, proc, deadline, shown)


