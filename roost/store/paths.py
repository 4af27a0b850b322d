"""Well-known locations. Pure functions of the environment, no I/O."""

from __future__ import annotations

import os
from pathlib import Path


def roost_home() -> Path:
    """All instance state lives here (`ROOST_HOME`, default ~/.roost)."""
    env = os.environ.get("ROOST_HOME")
    return Path(env).expanduser() if env else Path.home() / ".roost"


def config_dir() -> Path:
    """Keys shared by all instances."""
    return roost_home() / "_config"


def cache_dir() -> Path:
    """Downloaded and built images; shared across ROOST_HOMEs on purpose."""
    env = os.environ.get("ROOST_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "roost"
