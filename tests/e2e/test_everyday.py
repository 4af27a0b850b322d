"""Everyday commands a Lima user keeps using: shell --workdir, restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

from tests.e2e.conftest import (
    E2E_DISK,
    E2E_ENV_VALUE,
    Roost,
    as_guest_root,
    assert_guest_clock_is_the_hosts,
    e2e_ca_cert,
    small_vm,
)


def test_shell_workdir(roost: Roost, vm: str) -> None:
    roost.run("shell", vm, "--", "mkdir", "-p", "/tmp/roost wd")
    assert roost.run("shell", "--workdir", "/tmp/roost wd", vm, "--",
                     "pwd").stdout == "/tmp/roost wd\n"
    # No command: the login shell starts there (here reading its commands from stdin).
    out = roost.run("shell", "--workdir", "/tmp/roost wd", vm, input="pwd\n").stdout
    assert out.strip().splitlines()[-1] == "/tmp/roost wd"
    proc = roost.run("shell", "--workdir", "/nonexistent", vm, "--", "true", check=False)
    assert proc.returncode != 0 and "/nonexistent" in proc.stderr


def test_env_reaches_every_login(roost: Roost, vm: str) -> None:
    """roost.yaml's env in a command and in an interactive login (the built-in
    image's dropbear has no pam_env: its users' login shell reads
    /etc/environment). The guest user is root in the root pass."""
    command = roost.run("shell", vm, "--", "sh", "-c", 'printf "[%s]" "$ROOST_E2E_ENV"')
    assert command.stdout == f"[{E2E_ENV_VALUE}]"
    login = roost.run("shell", vm, input='printf "[%s]" "$ROOST_E2E_ENV"\n')
    assert f"[{E2E_ENV_VALUE}]" in login.stdout


def test_ca_certs_are_the_bundle(roost: Roost, vm: str) -> None:
    """caCerts on the built-in image, which has no CA bundle (nor TLS client)
    of its own: the certificates are the bundle, where OpenSSL looks."""
    want = e2e_ca_cert(roost).read_text().strip()
    for path in ("/etc/ssl/certs/ca-certificates.crt",
                 "/usr/local/share/ca-certificates/roost.crt"):
        assert roost.run("shell", vm, "--", "cat", path).stdout.strip() == want


DISK_MOUNT = f"/mnt/roost-{E2E_DISK}"


def disk_row(roost: Roost) -> dict[str, Any]:
    [row] = [r for r in json.loads(roost.run("disk", "ls", "--json").stdout)
             if r["name"] == E2E_DISK]
    return dict(row)


def test_additional_disk_is_made_mounted_and_held(roost: Roost, vm: str) -> None:
    """additionalDisks: the blank disk got ext4 at boot and is mounted at
    /mnt/roost-NAME; `roost disk` shows who has it and refuses to delete it."""
    mounts = roost.run("shell", vm, "--", "cat", "/proc/mounts").stdout
    assert any(line.split()[1:3] == [DISK_MOUNT, "ext4"] for line in mounts.splitlines()), mounts
    roost.run("shell", vm, "--", *as_guest_root(
        "sh", "-c", f"echo kept > {DISK_MOUNT}/marker && sync"))
    row = disk_row(roost)
    assert row["inUseBy"] == vm and row["size"] == 256 * 1024**2, row
    refused = roost.run("disk", "delete", E2E_DISK, check=False)
    assert refused.returncode == 2 and f"in use by instance {vm!r}" in refused.stderr


def test_restart_boots_the_guest_again(roost: Roost, vm: str) -> None:
    boot_id = "/proc/sys/kernel/random/boot_id"
    before = roost.run("shell", vm, "--", "cat", boot_id).stdout
    roost.run("restart", vm, timeout=600)
    assert roost.ls()[vm]["status"] == "Running"
    assert roost.run("shell", vm, "--", "cat", boot_id).stdout != before
    # Its clock is the host's again, not the RTC's whole second.
    assert_guest_clock_is_the_hosts(roost, vm)
    # The additional disk is mounted again, with what was on it (not formatted).
    assert roost.run("shell", vm, "--", "cat", f"{DISK_MOUNT}/marker").stdout == "kept\n"


def test_additional_disk_grows_with_resize(roost: Roost, vm: str) -> None:
    """`roost disk resize` of a stopped instance's disk: its ext4 fills the new
    size at the next boot, data kept. While the instance runs it is refused."""
    refused = roost.run("disk", "resize", E2E_DISK, "--size", "512MiB", check=False)
    assert refused.returncode == 2 and "in use by instance" in refused.stderr
    roost.run("stop", vm, timeout=180)
    assert disk_row(roost)["inUseBy"] is None
    roost.run("disk", "resize", E2E_DISK, "--size", "512MiB")
    roost.run("start", vm, "--timeout", "600", timeout=630)
    df = roost.run("shell", vm, "--", "df", "-k", DISK_MOUNT).stdout.splitlines()[-1].split()
    assert int(df[1]) > 400 * 1024, df  # 1 KiB blocks: 256 MiB before
    assert roost.run("shell", vm, "--", "cat", f"{DISK_MOUNT}/marker").stdout == "kept\n"


def test_a_running_instance_is_not_renamed(roost: Roost, vm: str) -> None:
    proc = roost.run("rename", vm, "renamed-e2e", check=False)
    assert proc.returncode == 1 and "only a stopped instance is renamed" in proc.stderr
    assert roost.ls()[vm]["status"] == "Running"
    assert not (roost.home / "renamed-e2e").exists()


def test_clone_boots_a_copy_with_its_own_identity(roost: Roost) -> None:
    identity = "cat /sys/class/net/eth0/address; hostname; cat /etc/roost-e2e-clone-mark"
    with small_vm(roost, "clsrc", "--set", "ssh.forwardAgent=true",
                  "--set", "param.MARK=from-param", "--set",
                  'provision=[{mode: system, script: "echo {{.Param.MARK}} > /etc/roost-param"}]'
                  ) as src:
        check_agent_forwarding(roost, src, vm_without="")
        # param: the provisioning step got its value.
        assert roost.run("shell", src, "--", "cat", "/etc/roost-param").stdout == "from-param\n"
        roost.run("shell", src, "--", *as_guest_root(
            "sh", "-c", "echo from-the-source > /etc/roost-e2e-clone-mark && sync"))
        before = roost.run("shell", src, "--", "sh", "-c", identity).stdout.split()
        proc = roost.run("clone", src, "clnew", check=False)
        assert proc.returncode == 1 and "only a stopped instance is cloned" in proc.stderr
        roost.run("stop", src)
        roost.run("clone", src, "clnew")
        # `roost watch` sees an instance that starts after the watch began.
        watcher = subprocess.Popen([sys.executable, "-m", "roost", "watch", "--json",
                                    "--duration", "600"], env=roost.env,
                                   stdout=subprocess.PIPE, text=True)
        try:
            assert not (roost.home / "clnew" / "ssh_host_ed25519_key").exists()
            roost.run("start", "clnew", timeout=600)
            assert watcher.stdout is not None
            for line in watcher.stdout:
                event = json.loads(line)
                if event["instance"] == "clnew" and event["status"].get("running"):
                    break
            watcher.kill()
            after = roost.run("shell", "clnew", "--", "sh", "-c", identity).stdout.split()
            assert after[2] == before[2] == "from-the-source"  # the disk came along
            assert after[0] != before[0] and after[1] != before[1]  # MAC, host name
            keys = [(roost.home / n / "ssh_host_ed25519_key.pub").read_text().split()[1]
                    for n in (src, "clnew")]
            assert keys[0] != keys[1]
            # Written in the clone, not in the source: its own disk.
            roost.run("shell", "clnew", "--", *as_guest_root(
                "sh", "-c", "echo clone-only > /etc/roost-e2e-clone-mark && sync"))
            roost.run("stop", "clnew")
            # factory-reset: the clone's own writes go with its disk.
            roost.run("factory-reset", "clnew")
            roost.run("start", "clnew", timeout=600)
            proc = roost.run("shell", "clnew", "--", "cat", "/etc/roost-e2e-clone-mark",
                             check=False)
            assert proc.returncode != 0 and "No such file" in proc.stderr
            roost.run("stop", "clnew")
            roost.run("start", src, timeout=600)
            assert roost.run("shell", src, "--", "cat", "/etc/roost-e2e-clone-mark"
                             ).stdout == "from-the-source\n"
        finally:
            watcher.kill()
            watcher.wait()
            roost.run("delete", "--force", "clnew", timeout=120)


def test_edit_is_refused_while_running(roost: Roost, vm: str) -> None:
    config = roost.home / vm / "roost.yaml"
    before = config.read_text()
    proc = roost.run("edit", vm, "--set", "cpus=1", check=False)
    assert proc.returncode == 1 and "edited while stopped" in proc.stderr
    assert config.read_text() == before


def check_agent_forwarding(roost: Roost, name: str, vm_without: str) -> None:
    """ssh.forwardAgent: true lends the user's agent to the guest through any
    ssh that reads the instance's ssh.config (here one without the master)."""
    started = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True)
    env = dict(os.environ)
    for part in started.stdout.replace("\n", ";").split(";"):
        key, eq, value = part.strip().partition("=")
        if eq and key in ("SSH_AUTH_SOCK", "SSH_AGENT_PID"):
            env[key] = value
    try:
        probe = 'test -S "$SSH_AUTH_SOCK" && echo lent || echo none'
        for inst, want in ((name, "lent"), (vm_without, "none")):
            if not inst:
                continue
            out = subprocess.run(["ssh", "-F", str(roost.home / inst / "ssh.config"),
                                  "-o", "ControlPath=none", f"roost-{inst}", probe], env=env,
                                 capture_output=True, text=True, timeout=120, check=True)
            assert out.stdout.strip() == want, (inst, out)
    finally:
        os.kill(int(env["SSH_AGENT_PID"]), signal.SIGTERM)


def test_no_agent_is_lent_by_default(roost: Roost, vm: str) -> None:
    check_agent_forwarding(roost, "", vm_without=vm)
