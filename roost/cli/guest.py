"""Commands served by the guest agent through the host agent: exec, status;
and `roost logs`, which reads the instance's logs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click

from roost.errors import UsageError
from roost.ops.guest import ask as ask_guest
from roost.store import logfile
from roost.store.instance import Instance

GUEST_AGENT_LOG = "/run/roost/guestagent.log"


def execute(name: str, argv: list[str], timeout: float, tty: bool) -> int:
    inst = Instance.at(name).require_running()
    if not argv:
        raise UsageError("give the command after --, e.g. roost exec NAME -- uname -a")
    from roost.cli import execclient

    return execclient.run(inst.ha_sock, argv, timeout, tty)


def status(name: str, as_json: bool) -> None:
    worker = ask_guest(name, "status")
    if as_json:
        click.echo(json.dumps(worker, indent=2))
        return
    last = worker.get("lastBusyAt")
    ago = f"{time.time() - last:.0f}s ago" if last else "never"
    click.echo(f"{name}: {worker['state']} (runnable {worker['runnable']:g}, "
               f"load {' '.join(f'{x:.2f}' for x in worker['loadavg'])}; last busy {ago})")


def _tail(path: Path, lines: int) -> int:
    """Print the last `lines` lines; return the offset reached."""
    data, offset = logfile.tail(path, lines)
    sys.stdout.write(data.decode(errors="replace"))
    sys.stdout.flush()
    return offset


def _follow(path: Path, offset: int) -> None:
    """Print what is appended, across the log's rotation or truncation."""
    log = logfile.Follower(path, offset)
    try:
        while True:
            data = log.read()
            if data:
                sys.stdout.write(data.decode(errors="replace"))
                sys.stdout.flush()
            time.sleep(0.2)
    finally:
        log.close()


def logs(name: str, source: str, lines: int, follow: bool) -> int:
    inst = Instance.at(name).require()
    if source == "guestagent":
        from roost.sshutil.config import ssh_argv

        inst.require_running()
        cmd = ["tail", "-n", str(lines), *(["-f"] if follow else []), GUEST_AGENT_LOG]
        return subprocess.call(ssh_argv(inst, cmd))
    path = inst.serial_log if source == "serial" else inst.ha_stderr
    offset = _tail(path, lines)
    if follow:
        try:
            _follow(path, offset)
        except KeyboardInterrupt:
            return 0
    return 0


def health(name: str, as_json: bool) -> None:
    result = ask_guest(name, "health")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    if not result["checks"] and not result["errors"]:
        click.echo(f"{name}: no health checks (roost.yaml healthChecks, or "
                   "/etc/roost/integrations.d/*.json in the guest)")
    for check in result["checks"]:
        detail = f"  {check['detail']}" if check["detail"] else ""
        click.echo(f"{check['name']:<20} {check['status']:<9}{detail}")
    for err in result["errors"]:
        click.echo(f"bad file {err['file']}: {err['error']}", err=True)


def probes(name: str, as_json: bool) -> None:
    result = ask_guest(name, "probes")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for probe in result["probes"]:
        state = {True: "ok", False: "failed", None: "pending"}[probe.get("ok")]
        extra = probe.get("error") or json.dumps(probe.get("output", ""))
        click.echo(f"{probe['name']:<20} {state:<8} {extra}")
    for err in result["errors"]:
        click.echo(f"bad file {err['file']}: {err['error']}", err=True)


def show_diff(name: str, as_json: bool) -> None:
    from roost.config.sizes import human_size

    result = ask_guest(name, "diff")
    changes = result["changes"]
    if as_json:
        click.echo(json.dumps(changes, indent=2))
        return
    marks = {"created": "+", "modified": "~", "deleted": "-"}
    for c in changes:
        size = human_size(c["size"]) if c["size"] else "0B"
        click.echo(f"{marks[c['kind']]} {c['path']}  ({size})")
