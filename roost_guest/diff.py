"""What changed in the guest's file system since boot, from an overlay root.

The upper layer holds every change: a regular file, link or directory there
is created (no such path in the lower layer) or modified (there is);
a whiteout (a 0/0 character device, or an aufs-style `.wh.NAME`) is a
deletion of NAME; an opaque directory (xattr trusted.overlay.opaque = y)
hides all of the lower directory, so what the lower layer had under it and
the upper does not is deleted. Directories are listed only when created or
opaque: any change copies its parents up, which is not a change to them.

Standard library only: runs in the guest.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List

LOWER = "/mnt/roost-lower"
UPPER = "/mnt/roost-upper/upper"
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"


class DiffError(Exception):
    pass


def _is_opaque(path: str, names: List[str]) -> bool:
    if OPAQUE_MARKER in names:
        return True
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def _hidden_lower_files(lower: str, rel_dir: str) -> List[Dict[str, Any]]:
    """Files under a lower directory that an opaque upper directory hides."""
    out = []
    for dirpath, _dirnames, filenames in os.walk(os.path.join(lower, rel_dir)):
        for name in filenames:
            full = os.path.join(dirpath, name)
            try:
                size = os.lstat(full).st_size
            except OSError:
                continue
            out.append({"path": "/" + os.path.relpath(full, lower), "kind": "deleted",
                        "size": size})
    return out


def diff(lower: str = LOWER, upper: str = UPPER) -> List[Dict[str, Any]]:
    if not os.path.isdir(upper):
        raise DiffError("this guest has no overlay root (set readOnlyRoot: true in roost.yaml)")
    changes: List[Dict[str, Any]] = []
    upper_paths = set()
    for dirpath, dirnames, filenames in os.walk(upper):
        rel_dir = os.path.relpath(dirpath, upper)
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.join(rel_dir, name)
            path = "/" + rel
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if name == OPAQUE_MARKER:
                continue
            if name.startswith(WHITEOUT_PREFIX):
                target = os.path.join(rel_dir, name[len(WHITEOUT_PREFIX):])
                changes.append(_deleted(lower, target))
                continue
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                changes.append(_deleted(lower, rel))
                continue
            upper_paths.add(path)
            in_lower = os.path.lexists(os.path.join(lower, rel))
            if stat.S_ISDIR(st.st_mode):
                names = os.listdir(full)
                opaque = _is_opaque(full, names)
                if not in_lower:
                    changes.append({"path": path, "kind": "created", "size": 0})
                elif opaque:
                    changes.append({"path": path, "kind": "modified", "size": 0})
                    changes.extend(_hidden_lower_files(lower, rel))
                continue
            changes.append({"path": path, "kind": "modified" if in_lower else "created",
                            "size": st.st_size})
    # A hidden lower file re-created in an opaque directory is modified, not both.
    by_path: Dict[str, Dict[str, Any]] = {}
    for change in changes:
        prev = by_path.get(change["path"])
        if prev is not None and prev["kind"] == "deleted" and change["kind"] != "deleted":
            change = {**change, "kind": "modified"}
        elif prev is not None and change["kind"] == "deleted":
            change = {**prev, "kind": "modified"}
        by_path[change["path"]] = change
    return [by_path[p] for p in sorted(by_path)]


def _deleted(lower: str, rel: str) -> Dict[str, Any]:
    try:
        size = os.lstat(os.path.join(lower, rel)).st_size
    except OSError:
        size = 0
    return {"path": "/" + rel, "kind": "deleted", "size": size}
