"""The guest agent zipapp runs on any python3 (bytecode where versions match) and parses
options."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from roost.cidata import guest_agent_zipapp


def test_zipapp_runs_and_explains_bad_options(tmp_path: Path) -> None:
    pyz = tmp_path / "agent.pyz"
    pyz.write_bytes(guest_agent_zipapp())
    names = zipfile.ZipFile(pyz).namelist()
    # Sources for any guest Python, bytecode for one like the host's.
    assert "roost_guest/agent.pyc" in names and "roost_guest/agent.py" in names
    ok = subprocess.run([sys.executable, "-S", "-E", str(pyz), "--help"],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "--vsock-port N" in ok.stdout
    bad = subprocess.run([sys.executable, "-S", "-E", str(pyz), "--vsock-port", "x"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "needs a number" in bad.stderr


def test_zipapp_falls_back_to_sources_for_another_python(tmp_path: Path) -> None:
    """A guest whose Python has another bytecode magic compiles the sources."""
    pyz = tmp_path / "agent.pyz"
    data = guest_agent_zipapp()
    pyz.write_bytes(data)
    with zipfile.ZipFile(pyz) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    other = tmp_path / "other.pyz"
    with zipfile.ZipFile(other, "w") as zf:
        for name, body in entries.items():
            if name.endswith(".pyc"):
                body = b"\x00\x00\r\n" + body[4:]  # a magic number no Python has
            zf.writestr(name, body)
    ok = subprocess.run([sys.executable, "-S", "-E", str(other), "--help"],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "--vsock-port N" in ok.stdout, ok.stderr
