"""Mounts of host folders in a running instance, added and removed without
a restart: the host agent's /v1/mounts."""

from __future__ import annotations

import os
import urllib.parse
from typing import TYPE_CHECKING, Any

from roost.errors import UsageError, cut
from roost.ops import hostapi
from roost.store.instance import Instance
from roost_guest.protocol import guest_mount_point_problem

if TYPE_CHECKING:
    from roost.hostagent.apimodels import MountType

MOUNT_TIMEOUT = 120.0  # a hot-plug under TCG takes a second or two


def add(name: str, host_path: str, guest_path: str, kind: MountType | None = None,
        writable: bool = False) -> dict[str, Any]:
    """Mount HOST_PATH at GUEST_PATH in NAME; the mount as `list` shows it."""
    from roost.hostagent.apimodels import MountAdd

    # Refused before anything else: the host agent checks it again.
    problem = guest_mount_point_problem(guest_path)
    if problem:
        raise UsageError(cut(problem))
    inst = Instance.at(name).require_running()
    body = MountAdd(location=os.path.abspath(os.path.expanduser(host_path)),
                    mount_point=guest_path, type=kind or "", writable=writable)
    record: dict[str, Any] = hostapi.request(inst.ha_sock, "POST", "/v1/mounts", body.wire(),
                                             timeout=MOUNT_TIMEOUT)
    return record


def remove_query(guest_path: str, force: bool) -> str:
    """DELETE /v1/mounts's query string (booleans as true/false)."""
    from roost.hostagent.apimodels import MountRemove

    wire = MountRemove(mount_point=guest_path, force=force).wire()
    return urllib.parse.urlencode({k: str(v).lower() if isinstance(v, bool) else v
                                   for k, v in wire.items()})


def remove(name: str, guest_path: str, force: bool = False) -> None:
    """Unmount GUEST_PATH (a runtime mount) and detach its device."""
    inst = Instance.at(name).require_running()
    hostapi.request(inst.ha_sock, "DELETE", f"/v1/mounts?{remove_query(guest_path, force)}",
                    timeout=MOUNT_TIMEOUT)


def listing(name: str) -> list[dict[str, Any]]:
    """Static and runtime mounts of NAME, with their state and any error."""
    inst = Instance.at(name).require_running()
    mounts: list[dict[str, Any]] = hostapi.request(inst.ha_sock, "GET", "/v1/mounts")
    return mounts
