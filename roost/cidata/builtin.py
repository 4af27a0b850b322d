"""What only the built-in image's init reads from the seed."""

from __future__ import annotations

from roost.cidata.identity import GuestIdentity
from roost.sshutil.dropbear import dropbear_ed25519_key

DROPBEAR_HOST_KEY = "dropbear_ed25519_host_key"


def builtin_files(ident: GuestIdentity) -> dict[str, bytes]:
    # dropbear reads its host key straight from the ISO; cloud images get
    # the same key through user-data's ssh_keys.
    return {DROPBEAR_HOST_KEY: dropbear_ed25519_key(ident.host_private_key)}
