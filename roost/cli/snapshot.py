"""`roost snapshot create|apply|delete|list`: through the host agent (QMP)
while the instance runs, with qemu-img on the disk while it is stopped."""

from __future__ import annotations

import json
import time
import urllib.parse

import click

from roost.cli import haclient
from roost.errors import RoostError
from roost.hostagent.apimodels import SnapshotCreate
from roost.store import snapshots
from roost.store.instance import Instance, Status, operation_lock

SNAPSHOT_TIMEOUT = 300.0  # savevm writes guest RAM into the qcow2


def _instance(name: str) -> tuple[Instance, bool]:
    inst = Instance.at(name).require()
    status = inst.status()
    if status not in (Status.RUNNING, Status.STOPPED):
        raise RoostError(f"instance {name!r} is {status.value.lower()}; "
                         f"snapshots need it running or stopped")
    return inst, status == Status.RUNNING


def create(name: str, tag: str) -> None:
    snapshots.check_tag(tag)
    inst, running = _instance(name)
    if running:
        result = haclient.request(inst.ha_sock, "POST", "/v1/snapshots",
                                  SnapshotCreate(tag=tag).wire(),
                                  timeout=SNAPSHOT_TIMEOUT)
        state = "disk and VM state" if result["state"] == "vm" else (
            "disk only: a shared folder device blocks saving the VM state")
        click.echo(f"snapshot {tag} of {name} ({state})")
        return
    with operation_lock(name, "snapshot it"):
        snapshots.create_offline(inst, tag)
    click.echo(f"snapshot {tag} of {name} (disk)")


def apply(name: str, tag: str) -> None:
    snapshots.check_tag(tag)
    inst, running = _instance(name)
    if running:
        quoted = urllib.parse.quote(tag)
        haclient.request(inst.ha_sock, "POST", f"/v1/snapshots/{quoted}/apply",
                         timeout=SNAPSHOT_TIMEOUT)
    else:
        with operation_lock(name, "apply a snapshot"):
            snapshots.apply_offline(inst, tag)
    click.echo(f"{name} is back at snapshot {tag}")


def delete(name: str, tag: str) -> None:
    snapshots.check_tag(tag)
    inst, running = _instance(name)
    if running:
        haclient.request(inst.ha_sock, "DELETE", f"/v1/snapshots/{urllib.parse.quote(tag)}",
                         timeout=SNAPSHOT_TIMEOUT)
    else:
        with operation_lock(name, "delete a snapshot"):
            snapshots.delete_offline(inst, tag)
    click.echo(f"deleted snapshot {tag} of {name}")


def listing(name: str, as_json: bool) -> None:
    inst = Instance.at(name).require()
    snaps = snapshots.list_snapshots(inst)
    if as_json:
        click.echo(json.dumps(snaps, indent=2))
        return
    click.echo(f"{'TAG':<24} {'VM STATE':<10} DATE")
    for s in snaps:
        state = "yes" if s["vmStateSize"] else "disk only"
        date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["date"] or 0))
        click.echo(f"{s['tag']:<24} {state:<10} {date}")
