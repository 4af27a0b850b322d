"""`roost start` (and resume, restart): roost.ops.start, shown as it goes."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from roost.cli.progress import Progress
from roost.ops.start import StartFailed
from roost.ops.start import start as start_instance


def report_failure(e: StartFailed) -> None:
    for r in e.failed_requirements:
        _warn_requirement(r)
    click.echo(f"roost: error: {e}", err=True)
    if e.errors_dropped:
        click.echo(f"  ({e.errors_dropped} older errors not kept)", err=True)
    for err in e.errors:
        click.echo(f"  - {err}", err=True)
    for path, tail in e.log_tails.items():
        lines = "\n".join(f"    {line}" for line in tail.splitlines())
        click.echo(f"  last lines of {path}:\n{lines}", err=True)


def _warn_requirement(r: dict[str, object]) -> None:
    click.echo(f"roost: warning: {r['kind']} requirement failed: {r.get('error')}\n"
               f"  hint: {r.get('hint')}", err=True)


def start(name: str, config_file: str | None, timeout: float, *,
          template: str | None = None, sets: Sequence[str] = ()) -> int:
    """The exit status: 0 once NAME runs, 1 (said why) when it does not."""
    try:
        with Progress(f"starting {name}") as progress:
            started = start_instance(name, config_file, timeout, template=template,
                                     sets=sets, progress=progress)
    except StartFailed as e:
        report_failure(e)
        return 1
    for r in started.failed_requirements:
        _warn_requirement(r)
    state = "running (degraded)" if started.degraded else "running"
    sys.stdout.flush()
    click.echo(f"{name} is {state}; ssh port {started.ssh_port}. Try `roost shell {name}`.")
    return 0
