"""A fork's new SSH host key reaches a real OpenSSH sshd (run on this host
for the test): roost_guest.identity writes it where sshd_config names it,
removes the source's other host keys, and sshd's SIGHUP has the next
connection offer the new key."""

from __future__ import annotations

import base64
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost_guest import identity

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _keygen(path: Path) -> tuple[str, str]:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.read_text(), Path(f"{path}.pub").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _offered_key(port: int) -> str:
    proc = subprocess.run(["ssh-keyscan", "-t", "ed25519", "-p", str(port), "127.0.0.1"],
                          capture_output=True, text=True, timeout=20)
    lines = [ln for ln in proc.stdout.splitlines() if not ln.startswith("#")]
    return lines[0].split()[2] if lines else ""


def _as_sshd_user(path: Path) -> None:
    """sshd runs as root in a guest; a root test runs it as nobody (it will
    not run as root without /run/sshd), so nobody must read what it reads."""
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(path, nobody.pw_uid, nobody.pw_gid)


@pytest.fixture
def sshd() -> Iterator[tuple[Path, int, str]]:
    base = Path(tempfile.mkdtemp(prefix="roost-reid-"))
    base.chmod(0o777)
    etc = base / "etc-ssh"
    etc.mkdir()
    etc.chmod(0o755)
    _, old_public = _keygen(etc / "ssh_host_ed25519_key")
    _as_sshd_user(etc / "ssh_host_ed25519_key")
    (etc / "ssh_host_rsa_key").write_text("the source's other key")
    port = _free_port()
    (etc / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {etc}/ssh_host_ed25519_key\n"
        f"PidFile {base}/sshd.pid\nUsePAM no\nStrictModes no\n")
    (etc / "sshd_config").chmod(0o644)
    root = os.geteuid() == 0
    proc = subprocess.Popen([SSHD, "-D", "-f", str(etc / "sshd_config"), "-E",
                             str(base / "sshd.log")], user="nobody" if root else None,
                            group="nogroup" if root else None, extra_groups=[] if root else None)
    tmp_path = base
    try:
        deadline = time.monotonic() + 10
        while not _offered_key(port):
            assert proc.poll() is None, (tmp_path / "sshd.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert _offered_key(port) == old_public.split()[1]
        yield etc, port, str(tmp_path / "sshd.pid")
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def test_openssh_offers_the_fork_s_key(sshd: tuple[Path, int, str], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    etc, port, pidfile = sshd
    private, public = _keygen(tmp_path / "new")
    monkeypatch.setattr(identity, "OPENSSH_DIR", str(etc))
    monkeypatch.setattr(identity, "SSHD_PID_FILES", (pidfile,))
    problems: list[str] = []
    real_write = identity._write

    def write_for_sshd(path: str, data: bytes, mode: int) -> None:
        real_write(path, data, mode)
        _as_sshd_user(Path(path))

    monkeypatch.setattr(identity, "_write", write_for_sshd)
    assert identity.set_host_key(private, public, base64.b64encode(b"x").decode(),
                                 problems) == "openssh"
    assert problems == []
    assert not (etc / "ssh_host_rsa_key").exists()  # the source's
    assert (etc / "ssh_host_ed25519_key").stat().st_mode & 0o777 == 0o600
    deadline = time.monotonic() + 10
    while _offered_key(port) != public.split()[1]:
        assert time.monotonic() < deadline, "sshd still offers the old key"
        time.sleep(0.1)


def test_bad_identity_requests_are_refused_by_field() -> None:
    good = {"hostname": "kid", "mac": "52:55:55:00:00:01", "hostKey": "k",
            "hostKeyPublic": "p", "dropbearKey": "ZA=="}
    for field, value in (("hostname", "-bad"), ("hostname", "a" * 64), ("mac", "52:55"),
                         ("sourceMac", "zz"), ("hostKey", ""), ("dropbearKey", 3)):
        with pytest.raises(identity.IdentityError, match=field.rstrip("Key")[:4]):
            identity.reidentify({**good, field: value})


def test_the_listener_is_the_dropbear_that_holds_the_listening_socket() -> None:
    # A fork of a fork: a session the source's memory brought along, its
    # listener ended by the first fork, is orphaned and may be older than
    # the listener. Two real processes: one listens, the other does not.
    listen = ("import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
              "s.listen(); print(s.getsockname()[1], flush=True); time.sleep(30)")
    listener = subprocess.Popen([sys.executable, "-c", listen], stdout=subprocess.PIPE)
    session = subprocess.Popen(["sleep", "30"])
    try:
        assert listener.stdout is not None
        port = int(listener.stdout.readline())
        assert identity._listeners([session.pid, listener.pid], port) == [listener.pid]
        assert identity._listeners([session.pid], port) == []
    finally:
        for proc in (listener, session):
            proc.kill()
            proc.wait()
