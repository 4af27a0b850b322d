"""Key pairs made with the system ssh-keygen."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

from roost.errors import RoostError
from roost.store.home import make_private_dir


def _keygen(path: Path, comment: str) -> None:
    if shutil.which("ssh-keygen") is None:
        raise RoostError("ssh-keygen was not found; install openssh-client")
    make_private_dir(path.parent)
    proc = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise RoostError(f"ssh-keygen failed: {proc.stderr.strip()}")


def ensure_user_key(config_dir: Path) -> tuple[Path, str]:
    """The key roost logs in with (shared by all instances): (private path, public line)."""
    private = config_dir / "user"
    make_private_dir(config_dir)
    with open(config_dir / ".keygen.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not private.exists():
            _keygen(private, "roost")
    return private, Path(f"{private}.pub").read_text().strip()


def ensure_host_key(path: Path, name: str) -> tuple[str, str]:
    """The instance's SSH host key: (private key text, public line)."""
    if not path.exists():
        _keygen(path, f"roost-{name}")
    return path.read_text(), Path(f"{path}.pub").read_text().strip()
