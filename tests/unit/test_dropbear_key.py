from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from roost.sshutil.dropbear import KeyFormatError, dropbear_ed25519_key, openssh_ed25519_secret


def test_conversion_matches_the_public_key(tmp_path: Path) -> None:
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    secret = openssh_ed25519_secret(key.read_text())
    import base64
    import struct
    blob = base64.b64decode(Path(f"{key}.pub").read_text().split()[1])
    (n,) = struct.unpack(">I", blob[:4])
    public = blob[4 + n + 4 :]
    assert secret[32:] == public
    out = dropbear_ed25519_key(key.read_text())
    assert out[:15] == b"\0\0\0\x0bssh-ed25519" and out[15:19] == b"\0\0\0\x40"
    assert out[19:] == secret


def test_refuses_other_keys(tmp_path: Path) -> None:
    key = tmp_path / "enc"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(key)],
                   check=True)
    with pytest.raises(KeyFormatError, match="encrypted"):
        openssh_ed25519_secret(key.read_text())
    with pytest.raises(KeyFormatError, match="not an OpenSSH private key"):
        openssh_ed25519_secret("hello")
