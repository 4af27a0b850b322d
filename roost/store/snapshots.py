"""Internal qcow2 snapshots of an instance's disk, read with qemu-img.

A snapshot taken while the VM ran with `savevm` also holds the VM state
(vmStateSize > 0) and can be applied to the running VM; one taken while it
was stopped, or disk-only, holds the disk alone.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

from roost.errors import RoostError, UsageError, quote
from roost.store.instance import Instance

TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def check_tag(tag: str) -> str:
    if not TAG_RE.fullmatch(tag):  # fullmatch: $ alone lets a trailing newline in
        raise UsageError(f"invalid snapshot tag {quote(tag)}: use 1-63 letters, digits, '_', '.', "
                         "'-', starting with a letter or digit")
    return tag


def _qemu_img(*args: str) -> str:
    proc = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RoostError(f"qemu-img {args[0]}: {proc.stderr.strip()}")
    return proc.stdout


def list_snapshots(inst: Instance) -> list[dict[str, Any]]:
    """Also while QEMU runs (-U: a shared read of the image)."""
    info = json.loads(_qemu_img("info", "-U", "--output=json", str(inst.disk)))
    return [{"tag": s["name"], "vmStateSize": s.get("vm-state-size", 0),
             "date": s.get("date-sec"), "vmClock": s.get("vm-clock-sec")}
            for s in info.get("snapshots", [])]


def find(inst: Instance, tag: str) -> dict[str, Any] | None:
    return next((s for s in list_snapshots(inst) if s["tag"] == tag), None)


def create_offline(inst: Instance, tag: str) -> None:
    if find(inst, tag) is not None:
        raise UsageError(f"snapshot {tag!r} already exists")
    _qemu_img("snapshot", "-c", tag, str(inst.disk))
    inst.snapshot_machine(tag).unlink(missing_ok=True)  # a deleted one's, of the same tag


def apply_offline(inst: Instance, tag: str) -> None:
    if find(inst, tag) is None:
        raise UsageError(f"no snapshot {tag!r} (see roost snapshot list {inst.name})")
    _qemu_img("snapshot", "-a", tag, str(inst.disk))


def delete_offline(inst: Instance, tag: str) -> None:
    if find(inst, tag) is None:
        raise UsageError(f"no snapshot {tag!r} (see roost snapshot list {inst.name})")
    _qemu_img("snapshot", "-d", tag, str(inst.disk))
    inst.snapshot_machine(tag).unlink(missing_ok=True)
