"""The guest agent as a zipapp, built from this installation's sources."""

from __future__ import annotations

import importlib.util
import io
import marshal
import zipfile
from pathlib import Path

import roost_guest

GUEST_AGENT_FILE = "roost-guestagent.pyz"


def _bytecode(src: Path) -> bytes:
    """An unchecked-hash .pyc: no source stat, no mtime to compare (PEP 552)."""
    data = src.read_bytes()
    code = compile(data, f"roost_guest/{src.name}", "exec", dont_inherit=True)
    flags = 0b01  # hash-based, unchecked
    return (importlib.util.MAGIC_NUMBER + flags.to_bytes(4, "little")
            + importlib.util.source_hash(data) + marshal.dumps(code))


def guest_agent_zipapp() -> bytes:
    """Sources for any guest python3 >= 3.8, and this Python's bytecode beside them.

    Under TCG, compiling the agent in the guest costs about half a second of
    every boot. zipimport takes a .pyc whose magic number matches the guest's
    Python and falls back to the .py beside it when it does not, so a guest
    with the host's Python version (the built-in image, debian-12 on a
    Debian 12 host) skips the compile, and every other guest still runs.
    """
    buf = io.BytesIO()
    pkg = Path(roost_guest.__file__).parent
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for src in sorted(pkg.glob("*.py")):
            zf.writestr(f"roost_guest/{src.name}", src.read_bytes())
            zf.writestr(f"roost_guest/{src.stem}.pyc", _bytecode(src))
        zf.writestr("__main__.py", "from roost_guest.agent import main\nmain()\n")
    return b"#!/usr/bin/python3\n" + buf.getvalue()
