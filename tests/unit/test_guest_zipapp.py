"""The guest agent zipapp runs (from bytecode when versions match) and parses options."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from roost.cidata import GUEST_PYTHON, guest_agent_zipapp


def test_zipapp_runs_and_explains_bad_options(tmp_path: Path) -> None:
    pyz = tmp_path / "agent.pyz"
    pyz.write_bytes(guest_agent_zipapp())
    names = zipfile.ZipFile(pyz).namelist()
    if sys.version_info[:2] == GUEST_PYTHON:
        assert "roost_guest/agent.pyc" in names and "roost_guest/agent.py" not in names
    ok = subprocess.run([sys.executable, "-S", "-E", str(pyz), "--help"],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "--vsock-port N" in ok.stdout
    bad = subprocess.run([sys.executable, "-S", "-E", str(pyz), "--vsock-port", "x"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "needs a number" in bad.stderr
