"""The confinement of the daemons that serve shares (roost.hostagent.userns),
with real user and mount namespaces: a process sees the share read-only when
it was shared so, works as the share's owner and no one else, and can set no
setuid or setgid bit."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from roost.hostagent.userns import SCRATCH, Bind, Owner, spawn_confined

OTHER_UID = 54321  # owns the share when the test runs as root


def run_confined(share: Path, script: str, *, readonly: bool = False,
                 chroot: bool = False) -> subprocess.CompletedProcess[str]:
    async def go() -> subprocess.CompletedProcess[str]:
        proc = await spawn_confined(
            ["/bin/sh", "-c", script], [Bind(str(share), f"{SCRATCH}/share", readonly)],
            Owner.of_share(str(share)), chroot=chroot, chdir="/",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return subprocess.CompletedProcess([], proc.returncode or 0, out.decode(), "")
    return asyncio.run(go())


@pytest.fixture
def share(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Under a directory anyone may enter, owned by someone else when we are root.
    d = tmp_path_factory.mktemp("share")
    os.chmod(d.parent, 0o755)
    (d / "host.txt").write_text("from the host\n")
    if os.geteuid() == 0:
        os.chown(d, OTHER_UID, OTHER_UID)
        os.chown(d / "host.txt", OTHER_UID, OTHER_UID)
    return d


def test_a_read_only_share_is_read_only_in_the_namespace(share: Path) -> None:
    before = sorted(p.name for p in share.iterdir())
    out = run_confined(share, f"cat {SCRATCH}/share/host.txt; touch {SCRATCH}/share/new; "
                              f"echo x >> {SCRATCH}/share/host.txt; "
                              f"mount -o remount,rw {SCRATCH}/share; echo done",
                       readonly=True).stdout
    assert "from the host" in out and "Read-only file system" in out
    assert sorted(p.name for p in share.iterdir()) == before
    assert (share / "host.txt").read_text() == "from the host\n"


def test_files_made_are_the_owners_and_no_other_id_can_be_given(share: Path) -> None:
    owner = share.stat().st_uid
    out = run_confined(share, f"id -u; touch {SCRATCH}/share/made; "
                              f"chown 0:0 {SCRATCH}/share/made || echo chown-root-refused; "
                              f"chown 1234 {SCRATCH}/share/made || echo chown-other-refused").stdout
    assert out.splitlines()[0] == str(owner)
    assert (share / "made").stat().st_uid == owner
    assert "chown-other-refused" in out
    if owner != 0:
        assert "chown-root-refused" in out


def test_no_setuid_or_setgid_bit_can_be_set(share: Path) -> None:
    out = run_confined(share, f"cd {SCRATCH}/share; touch f; chmod 755 f && echo plain-ok; "
                              "chmod u+s f || echo suid-refused; chmod g+s f || echo sgid-refused; "
                              "mkdir -m 2755 d || echo sgid-dir-refused").stdout
    assert "plain-ok" in out and "suid-refused" in out and "sgid-refused" in out
    assert "sgid-dir-refused" in out
    assert (share / "f").stat().st_mode & 0o7777 == 0o755
    assert not (share / "d").exists()


def test_a_chroot_shows_nothing_but_the_binds(share: Path) -> None:
    sh = "/bin/sh"
    busy = [Bind(p, f"{SCRATCH}{p}", True) for p in (sh, "/lib64/ld-linux-x86-64.so.2",
                                                     "/lib/x86_64-linux-gnu/libc.so.6")]

    async def go() -> str:
        proc = await spawn_confined(
            [sh, "-c", "echo /*; echo /share/*; cd /share/..; echo *; echo ../../*"],
            [Bind(str(share), f"{SCRATCH}/share", True), *busy], Owner.of_share(str(share)),
            chroot=True, chdir="/share", stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        return out.decode()

    lines = asyncio.run(go()).splitlines()
    assert lines[0].split() == ["/bin", "/lib", "/lib64", "/share"]
    assert lines[1] == "/share/host.txt"
    assert lines[2].split() == ["bin", "lib", "lib64", "share"]
