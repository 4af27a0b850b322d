"""Merging a configuration over its `base:`, as Lima's limatmpl does.

Plain YAML data in, plain data out (no schema): a value the child sets wins;
maps merge key by key; lists are the child's entries, then the base's, so the
child's first-match rules and images come first. Two lists differ, as in Lima:
`provision` puts the base's steps first (a base installs what a child's
steps use), and `mountTypesUnsupported` keeps each type once.
"""

from __future__ import annotations

import copy
import os
from typing import Any

BASE_FIRST_LISTS = frozenset({"provision"})
UNIQUE_LISTS = frozenset({"mountTypesUnsupported"})


def merge(child: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """`child` over `base`; neither is modified. `base:` keys are not merged."""
    out = {k: copy.deepcopy(v) for k, v in child.items()}
    for key, value in base.items():
        if key == "base":
            continue
        if key not in out:
            out[key] = copy.deepcopy(value)
        else:
            out[key] = _merge_value(out[key], value, key)
    return out


def _merge_value(child: Any, base: Any, top_key: str) -> Any:
    if isinstance(child, dict) and isinstance(base, dict):
        out = dict(child)
        for key, value in base.items():
            out[key] = (_merge_value(out[key], value, top_key) if key in out
                        else copy.deepcopy(value))
        return out
    if isinstance(child, list) and isinstance(base, list):
        base_items = copy.deepcopy(base)
        items = base_items + child if top_key in BASE_FIRST_LISTS else child + base_items
        if top_key in UNIQUE_LISTS:
            items = _unique(items)
        return items
    return child


def _unique(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def _mount_point(mount: dict[str, Any]) -> str | None:
    point = mount.get("mountPoint") or mount.get("location")
    return os.path.expanduser(point) if isinstance(point, str) else None


def combine_mounts(data: dict[str, Any]) -> dict[str, Any]:
    """Join `mounts` entries that share a guest mount point, as Lima does once
    every base is merged: the first entry keeps its values and takes the ones
    it lacks from the later entries, which go. So a child can make a base's
    share writable by naming its location again."""
    mounts = data.get("mounts")
    if not isinstance(mounts, list):
        return data
    combined: list[Any] = []
    first_at: dict[str, int] = {}
    for mount in mounts:
        point = _mount_point(mount) if isinstance(mount, dict) else None
        if point is None:
            combined.append(mount)
        elif point in first_at:
            i = first_at[point]
            combined[i] = _merge_value(combined[i], mount, "mounts")
        else:
            first_at[point] = len(combined)
            combined.append(mount)
    return {**data, "mounts": combined}
