"""`roost mount add|remove|list`: the host agent's /v1/mounts on ha.sock."""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Any

import click

from roost.cli import haclient
from roost.cli.table import table_lines
from roost.errors import UsageError, cut
from roost.hostagent.apimodels import MountAdd, MountRemove, MountType
from roost.store.instance import Instance
from roost_guest.protocol import guest_mount_point_problem

MOUNT_TIMEOUT = 120.0  # a hot-plug under TCG takes a second or two


def add(name: str, host_path: str, guest_path: str, kind: MountType | None,
        writable: bool) -> None:
    # Refused before anything else: the host agent checks it again.
    problem = guest_mount_point_problem(guest_path)
    if problem:
        raise UsageError(cut(problem))
    inst = Instance.at(name).require_running()
    body = MountAdd(location=os.path.abspath(os.path.expanduser(host_path)),
                    mount_point=guest_path, type=kind or "", writable=writable)
    rec = haclient.request(inst.ha_sock, "POST", "/v1/mounts", body.wire(),
                           timeout=MOUNT_TIMEOUT)
    mode = "rw" if rec["writable"] else "ro"
    click.echo(f"mounted {rec['location']} at {rec['mountPoint']} ({rec['type']}, {mode})")


def remove_query(guest_path: str, force: bool) -> str:
    """DELETE /v1/mounts's query string (booleans as true/false)."""
    wire = MountRemove(mount_point=guest_path, force=force).wire()
    return urllib.parse.urlencode({k: str(v).lower() if isinstance(v, bool) else v
                                   for k, v in wire.items()})


def remove(name: str, guest_path: str, force: bool = False) -> None:
    inst = Instance.at(name).require_running()
    query = remove_query(guest_path, force)
    haclient.request(inst.ha_sock, "DELETE", f"/v1/mounts?{query}", timeout=MOUNT_TIMEOUT)
    click.echo(f"unmounted {guest_path}")


def listing(name: str, as_json: bool) -> None:
    inst = Instance.at(name).require_running()
    mounts: list[dict[str, Any]] = haclient.request(inst.ha_sock, "GET", "/v1/mounts")
    if as_json:
        click.echo(json.dumps(mounts, indent=2))
        return
    rows = [("GUEST PATH", "HOST PATH", "TYPE", "MODE", "EPHEMERAL", "STATE")]
    for m in mounts:
        rows.append((m["mountPoint"], m["location"], m["type"], "rw" if m["writable"] else "ro",
                     "yes" if m["ephemeral"] else "no", m["state"]))
    for line in table_lines(rows):
        click.echo(line)
    for m in mounts:  # why a share failed, below the table
        if m.get("error"):
            click.echo(f"{m['mountPoint']}: {m['error']}", err=True)
