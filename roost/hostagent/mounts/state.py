"""Runtime mounts on disk (mounts.json), for a host agent that takes over.

Runtime mounts are never written to roost.yaml, but the VM keeps them
while its host agent lives or dies: a host agent killed with -9 leaves the
guest with the shares mounted, the devices plugged into their root ports
and the virtiofsd processes serving them. Its successor reads here what
they are (tag, device id, slot, the daemon's pid and socket) and how far
the hot-plug counter went, so it reuses no tag, device id or slot.

Written on every add and remove, atomically and durably (roost.store.durable).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roost.errors import RoostError
from roost.store.durable import write_atomic

FILENAME = "mounts.json"
VERSION = 1


class MountStateError(RoostError):
    """mounts.json exists but cannot be read back."""


@dataclass(frozen=True)
class SavedMount:
    """One runtime mount as its host agent left it."""

    location: str
    mount_point: str
    type: str
    writable: bool
    tag: str
    device_id: str
    slot: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    virtiofsd_pid: int | None = None
    virtiofsd_socket: str | None = None
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"location": self.location, "mountPoint": self.mount_point, "type": self.type,
                "writable": self.writable, "tag": self.tag, "deviceId": self.device_id,
                "slot": self.slot, "options": self.options, "virtiofsdPid": self.virtiofsd_pid,
                "virtiofsdSocket": self.virtiofsd_socket, "error": self.error}

    @classmethod
    def from_json(cls, d: Any) -> SavedMount:
        if not isinstance(d, dict):
            raise ValueError("a mount is not an object")
        pid = d.get("virtiofsdPid")
        slot, sock, error = d.get("slot"), d.get("virtiofsdSocket"), d.get("error")
        out = cls(location=_text(d, "location"), mount_point=_text(d, "mountPoint"),
                  type=_text(d, "type"), writable=d.get("writable") is True,
                  tag=_text(d, "tag"), device_id=_text(d, "deviceId"),
                  slot=slot if isinstance(slot, str) else None,
                  options=dict(d["options"]) if isinstance(d.get("options"), dict) else {},
                  virtiofsd_pid=pid if isinstance(pid, int) and pid > 0 else None,
                  virtiofsd_socket=sock if isinstance(sock, str) else None,
                  error=error if isinstance(error, str) else "")
        if out.type not in ("virtiofs", "reverse-sshfs"):
            raise ValueError(f"mount type {out.type!r} cannot be a runtime mount")
        return out


def _text(d: dict[str, Any], key: str) -> str:
    value = d.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} is missing")
    return value


@dataclass(frozen=True)
class SavedMounts:
    counter: int  # the last hot-plug number handed out (tags roost-hotN, devices hotN)
    mounts: tuple[SavedMount, ...]


def save(inst_dir: Path, counter: int, mounts: list[SavedMount]) -> None:
    write_atomic(inst_dir / FILENAME, json.dumps(
        {"version": VERSION, "counter": counter, "mounts": [m.to_json() for m in mounts]},
        indent=1) + "\n", mode=0o600)


def load(inst_dir: Path) -> SavedMounts:
    """What the previous host agent saved; nothing saved is no mounts."""
    path = inst_dir / FILENAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return SavedMounts(0, ())
    except (OSError, ValueError) as e:
        raise MountStateError(f"{path} is unreadable ({e})") from None
    try:
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError(f"not version {VERSION} of the format")
        counter = data.get("counter")
        if not isinstance(counter, int) or counter < 0:
            raise ValueError("counter is not a count")
        mounts = tuple(SavedMount.from_json(m) for m in data.get("mounts", []))
    except (ValueError, TypeError) as e:
        raise MountStateError(f"{path} is unreadable ({e})") from None
    return SavedMounts(counter, mounts)


def discard(inst_dir: Path) -> None:
    (inst_dir / FILENAME).unlink(missing_ok=True)
