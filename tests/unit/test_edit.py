"""`roost edit`: --set and $EDITOR, and nothing invalid ever saved."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import yaml


def roost(home: Path, *args: str, editor: str = "true") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "roost", *args],
                          env={**os.environ, "ROOST_HOME": str(home), "EDITOR": editor,
                               "VISUAL": ""},
                          capture_output=True, text=True, timeout=60, check=False)


def cpus(home: Path) -> object:
    return yaml.safe_load((home / "e" / "roost.yaml").read_text())["cpus"]


def test_set_saves_only_a_valid_configuration(tmp_path: Path) -> None:
    assert roost(tmp_path, "create", "e", "--cpus", "2").returncode == 0
    before = (tmp_path / "e" / "roost.yaml").read_text()
    proc = roost(tmp_path, "edit", "e", "--set", "cpus=lots")
    assert proc.returncode == 2 and "cpus: expected a whole number" in proc.stderr
    assert (tmp_path / "e" / "roost.yaml").read_text() == before
    assert roost(tmp_path, "edit", "e", "--set", "cpus=3", "--set", "env.A=b").returncode == 0
    assert cpus(tmp_path) == 3


def test_editor_edits_are_validated(tmp_path: Path) -> None:
    assert roost(tmp_path, "create", "e", "--cpus", "2").returncode == 0
    proc = roost(tmp_path, "edit", "e", editor="sed -i s/^cpus:.*/cpus:\\ 4/")
    assert proc.returncode == 0 and "saved" in proc.stdout
    assert cpus(tmp_path) == 4
    # Not on a terminal, a bad edit is refused at once, the old file kept.
    proc = roost(tmp_path, "edit", "e", editor="sed -i s/^cpus:.*/cpus:\\ 0/")
    assert proc.returncode == 2 and "roost.yaml is unchanged" in proc.stderr
    assert cpus(tmp_path) == 4
    assert "unchanged" in roost(tmp_path, "edit", "e").stdout  # the editor saved nothing
    proc = roost(tmp_path, "edit", "e", editor="false")
    assert proc.returncode == 1 and "the editor exited 1" in proc.stderr


def test_a_bad_edit_on_a_terminal_comes_back_with_the_error(tmp_path: Path) -> None:
    assert roost(tmp_path, "create", "e", "--cpus", "2").returncode == 0
    # The first edit is invalid; the editor then sees roost's note and fixes it.
    seen = tmp_path / "second-draft"
    editor = tmp_path / "editor.sh"
    editor.write_text(f"""#!/bin/sh
if [ -e {tmp_path}/first-done ]; then
    cp "$1" {seen}
    sed -i 's/^cpus:.*/cpus: 6/' "$1"
else
    touch {tmp_path}/first-done
    sed -i 's/^cpus:.*/cpus: 0/' "$1"
fi
""")
    editor.chmod(0o755)
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(ROOST_HOME=str(tmp_path), EDITOR=str(editor), VISUAL="")
        os.execv(sys.executable, [sys.executable, "-m", "roost", "edit", "e"])
    output = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, output
    draft = seen.read_text()
    assert draft.startswith("# roost: NOT SAVED: ") and "greater than or equal to 1" in draft
    assert cpus(tmp_path) == 6
    assert "# roost:" not in (tmp_path / "e" / "roost.yaml").read_text()
