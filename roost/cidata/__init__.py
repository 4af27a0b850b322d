"""The cidata ISO: one read-only seed for every image.

Cloud images read its NoCloud part (meta-data, user-data, network-config;
see `cloudinit`); the built-in image's own init reads `roost.env` and the
dropbear key (see `builtin`). Both run the same provisioning script and
the same guest agent zipapp from it.
"""

from __future__ import annotations

import json
from importlib import resources

from roost.cidata.builtin import builtin_files
from roost.cidata.cloudinit import cloud_init_files
from roost.cidata.identity import GuestIdentity
from roost.cidata.iso import write_iso
from roost.cidata.zipapp import GUEST_AGENT_FILE, guest_agent_zipapp
from roost.config.model import PROVISION_ORDER, Provision
from roost_guest.protocol import BOOT_DONE_MARKER

__all__ = ["BOOT_DONE_MARKER", "GUEST_AGENT_FILE", "GuestIdentity", "files_for",
           "guest_agent_zipapp", "provision_files", "write_iso"]


def _guest_script(name: str) -> bytes:
    return (resources.files("roost.cidata") / "guest" / name).read_bytes()


def _quote_env(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def provision_files(steps: list[Provision]) -> dict[str, bytes]:
    """provision.d/NN-MODE, numbered in Lima's order of modes, then as written."""
    ordered = sorted(enumerate(steps), key=lambda s: (PROVISION_ORDER.index(s[1].mode), s[0]))
    files: dict[str, bytes] = {}
    for n, (_, step) in enumerate(ordered):
        name = f"provision.d/{n:02d}-{step.mode}"
        if step.mode == "data":
            assert step.path is not None and step.content is not None
            files[name] = step.content.encode()
            meta = {"path": step.path, "owner": step.owner,
                    "permissions": step.permissions, "overwrite": "1" if step.overwrite else "0"}
            files[f"{name}.meta"] = "".join(
                f"{k}={_quote_env(v)}\n" for k, v in meta.items()).encode()
        else:
            assert step.script is not None
            files[name] = step.script.encode()
    return files


def files_for(ident: GuestIdentity) -> dict[str, bytes]:
    """Every file of the seed, by path on the ISO."""
    files: dict[str, bytes] = {
        "roost.env": ident.env_file().encode(),
        "authorized_keys": ("\n".join(ident.authorized_keys) + "\n").encode(),
        GUEST_AGENT_FILE: guest_agent_zipapp(),
        "roost-provision": _guest_script("roost-provision"),
        "roost-boot": _guest_script("roost-boot"),
        "roost-environment": _guest_script("roost-environment"),
        "roost-disks": _guest_script("roost-disks"),
        "roost-dns": _guest_script("roost-dns"),
        **builtin_files(ident),
        **cloud_init_files(ident),
        **provision_files(ident.provision),
    }
    if ident.env:
        env = sorted(ident.env.items())
        # Sourced by the provisioning script, and in pam_env's format for logins.
        files["environment"] = "".join(f"{k}={_quote_env(v)}\n" for k, v in env).encode()
        files["environment.pam"] = "".join(f'{k}="{v}"\n' for k, v in env).encode()
    if ident.disks:
        files["disks"] = "".join(f"{name} {int(fmt)} {fs}\n"
                                 for name, fmt, fs in ident.disks).encode()
    if ident.ca_certs:
        # For the built-in image, which has no CA bundle of its own (cloud
        # images get them from cloud-init's ca_certs).
        files["ca-certs.pem"] = "".join(ident.ca_certs).encode()
    for check in ident.health_checks:
        files[f"integrations.d/{check['name']}.json"] = json.dumps(check).encode()
    return files
