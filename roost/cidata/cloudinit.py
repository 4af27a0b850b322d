"""The NoCloud seed that real cloud-init (22 and later) follows.

meta-data names the instance; user-data (#cloud-config) makes the host
user with roost's key and passwordless sudo, installs the SSH host key
roost pins (so the first connection is verified), sets the time zone, and
runs roost-boot from the seed on every boot (bootcmd runs each boot;
runcmd only once per instance); network-config v2 matches the NIC by the
MAC roost gave it.
"""

from __future__ import annotations

import yaml

from roost.cidata.identity import GuestIdentity

SEED_MOUNT = "/mnt/roost-cidata"
# Every boot: the seed mounted read-only, then roost-boot from it.
_BOOTCMD = (
    f"mkdir -p {SEED_MOUNT} && "
    f"{{ mountpoint -q {SEED_MOUNT} || mount -o ro LABEL=cidata {SEED_MOUNT}; }} && "
    f"{SEED_MOUNT}/roost-boot {SEED_MOUNT}"
)


def meta_data(ident: GuestIdentity) -> str:
    return yaml.safe_dump({"instance-id": ident.cloud_instance_id or ident.instance_id,
                           "local-hostname": ident.hostname})


def user_data(ident: GuestIdentity) -> str:
    doc: dict[str, object] = {
        "hostname": ident.hostname,
        "manage_etc_hosts": True,
        "ssh_pwauth": False,
        # The host key roost pins in known_hosts, and no other (with ssh_keys
        # given, cloud-init generates none).
        "ssh_deletekeys": True,
        "ssh_keys": {"ed25519_private": ident.host_private_key,
                     **({"ed25519_public": ident.host_public_key}
                        if ident.host_public_key else {})},
        "bootcmd": [["sh", "-c", _BOOTCMD]],
    }
    if ident.user == "root":
        # Root exists: cloud-init only gives it the key (and no default user).
        doc.update({"disable_root": False, "users": [{
            "name": "root", "lock_passwd": True, "ssh_authorized_keys": ident.authorized_keys,
        }]})
    else:
        doc.update({"disable_root": True, "users": [{
            "name": ident.user, "uid": ident.uid, "gecos": ident.user,
            "shell": "/bin/bash", "sudo": "ALL=(ALL) NOPASSWD:ALL", "lock_passwd": True,
            "ssh_authorized_keys": ident.authorized_keys,
        }]})
    if ident.timezone:
        doc["timezone"] = ident.timezone
    if ident.ca_certs or ident.ca_remove_defaults:
        # cloud-init's ca_certs module: update-ca-certificates with these added.
        doc["ca_certs"] = {"remove_defaults": ident.ca_remove_defaults,
                           "trusted": ident.ca_certs}
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False)


def network_config(ident: GuestIdentity) -> str:
    eth0: dict[str, object] = {"dhcp4": True, "set-name": "eth0"}
    if ident.mac:
        eth0["match"] = {"macaddress": ident.mac}
    return yaml.safe_dump({"version": 2, "ethernets": {"eth0": eth0}}, sort_keys=False)


def cloud_init_files(ident: GuestIdentity) -> dict[str, bytes]:
    return {
        "meta-data": meta_data(ident).encode(),
        "user-data": user_data(ident).encode(),
        "network-config": network_config(ident).encode(),
    }
