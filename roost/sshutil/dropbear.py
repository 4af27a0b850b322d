"""Convert an OpenSSH ed25519 private key to dropbear's key file format.

Done on the host so the guest need not run `dropbearconvert` on every boot
(a quarter second under TCG). Both formats carry the same 64 bytes: the
32-byte seed followed by the 32-byte public key.
"""

from __future__ import annotations

import base64
import struct

_ARMOR_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
_ARMOR_END = "-----END OPENSSH PRIVATE KEY-----"
_MAGIC = b"openssh-key-v1\0"
_KEYTYPE = b"ssh-ed25519"


class KeyFormatError(ValueError):
    pass


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise KeyFormatError("truncated OpenSSH private key")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def string(self) -> bytes:
        return self.take(self.uint32())


def _string(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def openssh_ed25519_secret(private_key_text: str) -> bytes:
    """The 64-byte seed+public key of an unencrypted OpenSSH ed25519 key."""
    text = private_key_text.strip()
    if not (text.startswith(_ARMOR_BEGIN) and text.endswith(_ARMOR_END)):
        raise KeyFormatError("not an OpenSSH private key")
    body = base64.b64decode("".join(text[len(_ARMOR_BEGIN) : -len(_ARMOR_END)].split()))
    if not body.startswith(_MAGIC):
        raise KeyFormatError("not an openssh-key-v1 key")
    r = _Reader(body[len(_MAGIC) :])
    cipher, kdf = r.string(), r.string()
    r.string()  # kdf options
    if cipher != b"none" or kdf != b"none":
        raise KeyFormatError("the key is encrypted")
    if r.uint32() != 1:
        raise KeyFormatError("expected exactly one key")
    r.string()  # public key blob
    priv = _Reader(r.string())
    if priv.uint32() != priv.uint32():
        raise KeyFormatError("corrupt private section (check words differ)")
    if priv.string() != _KEYTYPE:
        raise KeyFormatError("not an ed25519 key")
    public, secret = priv.string(), priv.string()
    if len(public) != 32 or len(secret) != 64 or secret[32:] != public:
        raise KeyFormatError("malformed ed25519 key material")
    return secret


def dropbear_ed25519_key(private_key_text: str) -> bytes:
    """The key in dropbear's format: string "ssh-ed25519", string seed+public."""
    return _string(_KEYTYPE) + _string(openssh_ed25519_secret(private_key_text))
