"""ROOST_HOME and the private directories in it, made 0700 when first made.

The host agent's API is reachable only by the instance's owner: its socket
is 0600 in a directory only the owner may enter. A directory roost makes
is 0700 from its first moment (an mkdir mode, not a chmod after), and so is
every missing parent it makes on the way: a fresh ROOST_HOME included.
"""

from __future__ import annotations

from pathlib import Path

from roost.store.paths import roost_home

PRIVATE_MODE = 0o700


def make_private_dir(path: Path) -> Path:
    """`path` and its missing parents, each made 0700 (existing ones are left as they are)."""
    missing = []
    here = path
    while not here.exists():
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    for directory in reversed(missing):
        directory.mkdir(mode=PRIVATE_MODE, exist_ok=True)
    return path


def ensure_home() -> Path:
    return make_private_dir(roost_home())
