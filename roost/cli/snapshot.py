"""`roost snapshot create|apply|delete|list` (roost.ops.snapshots)."""

from __future__ import annotations

import json
import time

import click

from roost.ops import snapshots

SAID = {"vm": "disk and VM state", "disk": "disk",
        "disk-only": "disk only: a shared folder device blocks saving the VM state"}


def create(name: str, tag: str) -> None:
    click.echo(f"snapshot {tag} of {name} ({SAID[snapshots.create(name, tag)]})")


def apply(name: str, tag: str) -> None:
    snapshots.apply(name, tag)
    click.echo(f"{name} is back at snapshot {tag}")


def delete(name: str, tag: str) -> None:
    snapshots.delete(name, tag)
    click.echo(f"deleted snapshot {tag} of {name}")


def listing(name: str, as_json: bool) -> None:
    snaps = snapshots.listing(name)
    if as_json:
        click.echo(json.dumps(snaps, indent=2))
        return
    click.echo(f"{'TAG':<24} {'VM STATE':<10} DATE")
    for s in snaps:
        state = "yes" if s["vmStateSize"] else "disk only"
        date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["date"] or 0))
        click.echo(f"{s['tag']:<24} {state:<10} {date}")
