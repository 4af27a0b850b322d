"""Who and what the guest is: the facts the seed carries."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from roost.config.model import Provision

# The host as the guest reaches it (slirp's gateway on roost's guest network).
HOST_ADDRESS = "192.168.5.2"


@dataclass
class GuestIdentity:
    # Changes at every start: the boot-done marker must be of this boot.
    instance_id: str
    hostname: str
    user: str
    uid: int
    authorized_keys: list[str]
    host_private_key: str
    host_public_key: str = ""
    # cloud-init's instance-id: stable for the instance's life, so cloud-init
    # runs its first-boot modules (user, host keys, growpart) once.
    cloud_instance_id: str = ""
    mac: str = ""
    guest_addr: str = "192.168.5.15/24"
    gateway: str = HOST_ADDRESS
    dns: str = "192.168.5.3"
    provision: list[Provision] = field(default_factory=list)
    allow_exec: bool = False
    allow_files: bool = False
    health_checks: list[dict[str, object]] = field(default_factory=list)
    busy_threshold: float = 0.5
    sample_secs: float = 1.0
    env: dict[str, str] = field(default_factory=dict)
    timezone: str | None = None
    # roost.yaml's caCerts: PEM certificates, and whether the image's own go.
    ca_certs: list[str] = field(default_factory=list)
    ca_remove_defaults: bool = False
    # roost.yaml's additionalDisks: (name, format when blank, file system type).
    disks: list[tuple[str, bool, str]] = field(default_factory=list)
    # hostResolver's port on the host's loopback (0: off): the guest sends
    # what it asks of `dns` there instead, through the gateway.
    dns_port: int = 0

    def env_file(self) -> str:
        """roost.env: shell-quoted values the guest's scripts source."""
        values = {
            "ROOST_INSTANCE_ID": self.instance_id,
            "ROOST_HOSTNAME": self.hostname,
            "ROOST_USER": self.user,
            "ROOST_UID": str(self.uid),
            "ROOST_GUEST_ADDR": self.guest_addr,
            "ROOST_GATEWAY": self.gateway,
            "ROOST_DNS": self.dns,
            "ROOST_DNS_PORT": str(self.dns_port),
            "ROOST_ALLOW_EXEC": "1" if self.allow_exec else "0",
            "ROOST_ALLOW_FILES": "1" if self.allow_files else "0",
            "ROOST_BUSY_THRESHOLD": f"{self.busy_threshold:g}",
            "ROOST_SAMPLE_SECS": f"{self.sample_secs:g}",
        }
        return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())
