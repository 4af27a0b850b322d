"""`roost copy`: host to guest, guest to host, guest to guest, through OpenSSH."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from tests.e2e.conftest import Roost

GUEST_DIR = "/tmp/roost-copy-e2e"


def make_tree(root: Path) -> dict[str, str]:
    """A small tree (nested, a name with a space, binary data, an executable);
    its files' sha256 by relative path."""
    (root / "sub dir" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub dir" / "b.bin").write_bytes(os.urandom(300_000))
    tool = root / "sub dir" / "deeper" / "tool.sh"
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    return tree_digests(root)


def tree_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def guest_digests(roost: Roost, vm: str, root: str) -> dict[str, str]:
    out = roost.run("shell", vm, "--", "sh", "-c",
                    f"cd {root} && find . -type f -exec sha256sum {{}} +").stdout
    digests = {}
    for line in out.splitlines():
        digest, path = line.split(None, 1)
        digests[path.removeprefix("./")] = digest
    return digests


def test_copy_a_tree_there_and_back(roost: Roost, vm: str, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    src.mkdir()
    want = make_tree(src)
    roost.run("shell", vm, "--", "rm", "-rf", GUEST_DIR)
    roost.run("shell", vm, "--", "mkdir", "-p", GUEST_DIR)
    # As cp -r: into an existing directory, the tree keeps its name; to a new
    # name, the copy is that name (a trailing slash changes nothing).
    roost.run("copy", "-r", str(src), f"{vm}:{GUEST_DIR}")
    roost.run("cp", "-r", f"{src}/", f"{vm}:{GUEST_DIR}/renamed")
    assert guest_digests(roost, vm, f"{GUEST_DIR}/tree") == want
    assert guest_digests(roost, vm, f"{GUEST_DIR}/renamed") == want
    mode = roost.run("shell", vm, "--", "stat", "-c", "%a",
                     f"{GUEST_DIR}/tree/sub dir/deeper/tool.sh").stdout.strip()
    assert mode == "755"
    # Guest to guest (here the same instance at both ends: through the host).
    roost.run("copy", "-r", f"{vm}:{GUEST_DIR}/tree", f"{vm}:{GUEST_DIR}/again")
    assert guest_digests(roost, vm, f"{GUEST_DIR}/again") == want
    # Back to the host, to a new name.
    back = tmp_path / "back"
    roost.run("copy", "-r", f"{vm}:{GUEST_DIR}/again", str(back))
    assert tree_digests(back) == want
    # One file, to a relative guest path (the guest user's home).
    roost.run("copy", str(src / "a.txt"), f"{vm}:roost-copy-e2e.txt")
    assert roost.run("shell", vm, "--", "cat", "roost-copy-e2e.txt").stdout == "alpha\n"
    roost.run("shell", vm, "--", "rm", "-rf", GUEST_DIR, "roost-copy-e2e.txt")


def test_copy_passes_the_exit_status_through(roost: Roost, vm: str, tmp_path: Path) -> None:
    proc = roost.run("copy", f"{vm}:/nonexistent/roost-e2e", str(tmp_path), check=False)
    assert proc.returncode == 1, proc
    assert "No such file" in proc.stderr, proc.stderr
    # A directory without -r is refused by scp, as by cp.
    proc = roost.run("copy", str(tmp_path), f"{vm}:/tmp/", check=False)
    assert proc.returncode != 0 and "not a regular file" in proc.stderr, proc.stderr


def test_copy_refuses_bad_locations(roost: Roost, vm: str, tmp_path: Path) -> None:
    proc = roost.run("copy", str(tmp_path), "no-such-vm:/tmp", check=False)
    assert proc.returncode == 2 and "no instance named 'no-such-vm'" in proc.stderr
    proc = roost.run("copy", "a", "b", check=False)
    assert proc.returncode == 2 and "neither side is in an instance" in proc.stderr
    proc = roost.run("copy", "--backend", "rsync", f"{vm}:/etc/hostname", f"{vm}:/tmp/",
                     check=False)
    assert proc.returncode == 2 and "rsync cannot copy from one instance" in proc.stderr


def test_ssh_config_serves_every_openssh_tool(roost: Roost, vm: str, tmp_path: Path) -> None:
    # What docs/copy.md promises: `-F ~/.roost/NAME/ssh.config roost-NAME`.
    config, host = str(roost.home / vm / "ssh.config"), f"roost-{vm}"
    assert subprocess.run(["ssh", "-F", config, host, "echo", "over-ssh"], capture_output=True,
                          text=True, timeout=60, check=True).stdout == "over-ssh\n"
    (tmp_path / "up.txt").write_text("through sftp\n")
    batch = f"put {tmp_path / 'up.txt'} /tmp/roost-sftp.txt\nget /tmp/roost-sftp.txt " \
            f"{tmp_path / 'down.txt'}\n"
    subprocess.run(["sftp", "-F", config, "-b", "-", host], input=batch, text=True,
                   capture_output=True, timeout=60, check=True)
    assert (tmp_path / "down.txt").read_text() == "through sftp\n"
    subprocess.run(["scp", "-F", config, str(tmp_path / "up.txt"), f"{host}:/tmp/roost-scp.txt"],
                   capture_output=True, timeout=60, check=True)
    assert roost.run("shell", vm, "--", "cat", "/tmp/roost-scp.txt").stdout == "through sftp\n"
