"""`roost mount add|remove|list` (roost.ops.mounts)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from roost.cli.table import table_lines
from roost.ops import mounts

if TYPE_CHECKING:
    from roost.hostagent.apimodels import MountType


def add(name: str, host_path: str, guest_path: str, kind: MountType | None,
        writable: bool) -> None:
    rec = mounts.add(name, host_path, guest_path, kind, writable)
    mode = "rw" if rec["writable"] else "ro"
    click.echo(f"mounted {rec['location']} at {rec['mountPoint']} ({rec['type']}, {mode})")


def remove(name: str, guest_path: str, force: bool = False) -> None:
    mounts.remove(name, guest_path, force)
    click.echo(f"unmounted {guest_path}")


def listing(name: str, as_json: bool) -> None:
    shares = mounts.listing(name)
    if as_json:
        click.echo(json.dumps(shares, indent=2))
        return
    rows = [("GUEST PATH", "HOST PATH", "TYPE", "MODE", "EPHEMERAL", "STATE")]
    for m in shares:
        rows.append((m["mountPoint"], m["location"], m["type"], "rw" if m["writable"] else "ro",
                     "yes" if m["ephemeral"] else "no", m["state"]))
    for line in table_lines(rows):
        click.echo(line)
    for m in shares:  # why a share failed, below the table
        if m.get("error"):
            click.echo(f"{m['mountPoint']}: {m['error']}", err=True)
