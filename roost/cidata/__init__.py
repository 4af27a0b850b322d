"""The cidata ISO: NoCloud seed for cloud images, roost's own boot data for
the built-in image, and the guest agent zipapp, on one read-only disk.
"""

from __future__ import annotations

import importlib.util
import io
import json
import marshal
import shlex
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import roost_guest
from roost.sshutil.dropbear import dropbear_ed25519_key

GUEST_AGENT_FILE = "roost-guestagent.pyz"
BOOT_DONE_MARKER = "/run/roost/boot-done"


@dataclass
class GuestIdentity:
    instance_id: str
    hostname: str
    user: str
    uid: int
    authorized_keys: list[str]
    host_private_key: str
    guest_addr: str = "192.168.5.15/24"
    gateway: str = "192.168.5.2"
    dns: str = "192.168.5.3"
    provision: list[tuple[str, str]] = field(default_factory=list)  # (mode, script)
    allow_exec: bool = False
    health_checks: list[dict[str, object]] = field(default_factory=list)
    busy_threshold: float = 0.5
    sample_secs: float = 1.0


DROPBEAR_HOST_KEY = "dropbear_ed25519_host_key"
# The built-in image's Python; bytecode compiled here runs there when the
# versions match (the bytecode format changes only between minor versions).
GUEST_PYTHON = (3, 11)


def _bytecode(src: Path) -> bytes:
    """An unchecked-hash .pyc: no source needed and no mtime to compare."""
    code = compile(src.read_bytes(), f"roost_guest/{src.name}", "exec", dont_inherit=True)
    flags = 0b01  # hash-based, unchecked (PEP 552)
    source_hash = importlib.util.source_hash(src.read_bytes())
    return (importlib.util.MAGIC_NUMBER + flags.to_bytes(4, "little") + source_hash
            + marshal.dumps(code))


def guest_agent_zipapp() -> bytes:
    """The guest agent as a zipapp built from this installation's sources.

    Under TCG, compiling the agent's sources in the guest costs about half a
    second of every boot, so when the host Python matches the guest's the
    zipapp carries bytecode only.
    """
    buf = io.BytesIO()
    pkg = Path(roost_guest.__file__).parent
    precompile = sys.version_info[:2] == GUEST_PYTHON
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for src in sorted(pkg.glob("*.py")):
            if precompile:
                zf.writestr(f"roost_guest/{src.stem}.pyc", _bytecode(src))
            else:
                zf.writestr(f"roost_guest/{src.name}", src.read_bytes())
        zf.writestr("__main__.py", "from roost_guest.agent import main\nmain()\n")
    return b"#!/usr/bin/python3\n" + buf.getvalue()


def _env_file(ident: GuestIdentity) -> str:
    values = {
        "ROOST_INSTANCE_ID": ident.instance_id,
        "ROOST_HOSTNAME": ident.hostname,
        "ROOST_USER": ident.user,
        "ROOST_UID": str(ident.uid),
        "ROOST_GUEST_ADDR": ident.guest_addr,
        "ROOST_GATEWAY": ident.gateway,
        "ROOST_DNS": ident.dns,
        "ROOST_ALLOW_EXEC": "1" if ident.allow_exec else "0",
        "ROOST_BUSY_THRESHOLD": f"{ident.busy_threshold:g}",
        "ROOST_SAMPLE_SECS": f"{ident.sample_secs:g}",
    }
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def _user_data(ident: GuestIdentity) -> str:
    user: dict[str, object] = {
        "name": ident.user,
        "uid": ident.uid,
        "ssh_authorized_keys": ident.authorized_keys,
        "shell": "/bin/bash",
        "sudo": "ALL=(ALL) NOPASSWD:ALL",
        "lock_passwd": True,
    }
    doc: dict[str, object] = {
        "users": [user] if ident.user != "root" else [],
        "disable_root": ident.user != "root",
        "ssh_authorized_keys": ident.authorized_keys if ident.user == "root" else [],
        "ssh_keys": {
            "ed25519_private": ident.host_private_key,
        },
        "write_files": [],
        "runcmd": [["sh", "-c", f"mkdir -p /run/roost && touch {BOOT_DONE_MARKER}"]],
    }
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False)


def files_for(ident: GuestIdentity) -> dict[str, bytes]:
    """Every file of the seed, by path on the ISO."""
    files: dict[str, bytes] = {
        "meta-data": yaml.safe_dump(
            {"instance-id": ident.instance_id, "local-hostname": ident.hostname}
        ).encode(),
        "user-data": _user_data(ident).encode(),
        "roost.env": _env_file(ident).encode(),
        "authorized_keys": ("\n".join(ident.authorized_keys) + "\n").encode(),
        # The built-in image's dropbear reads its host key straight from here;
        # cloud images get the same key through user-data's ssh_keys.
        DROPBEAR_HOST_KEY: dropbear_ed25519_key(ident.host_private_key),
        GUEST_AGENT_FILE: guest_agent_zipapp(),
    }
    for check in ident.health_checks:
        files[f"integrations.d/{check['name']}.json"] = json.dumps(check).encode()
    for i, (mode, script) in enumerate(ident.provision):
        files[f"provision.d/{i:02d}-{mode}.sh"] = script.encode()
    return files


def write_iso(path: Path, files: Mapping[str, bytes]) -> None:
    """Write an ISO 9660 image labelled `cidata` with Rock Ridge and Joliet names."""
    import pycdlib  # heavy; only the host agent needs it

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    dirs: dict[str, str] = {}
    for counter, name in enumerate(sorted(files), start=1):
        parent = ""
        if "/" in name:
            dirname, _ = name.rsplit("/", 1)
            if dirname not in dirs:
                dirs[dirname] = f"/D{len(dirs):06d}"
                iso.add_directory(dirs[dirname], rr_name=dirname, joliet_path=f"/{dirname}")
            parent = dirs[dirname]
        data = files[name]
        base = name.rsplit("/", 1)[-1]
        mode = 0o100755 if data.startswith(b"#!") else 0o100644
        if base == DROPBEAR_HOST_KEY:
            mode = 0o100600
        iso.add_fp(
            io.BytesIO(data), len(data), f"{parent}/F{counter:06d}.;1",
            rr_name=base, joliet_path=f"/{name}", file_mode=mode,
        )
    tmp = path.with_suffix(".tmp")
    iso.write(str(tmp))
    iso.close()
    tmp.replace(path)
