"""network.allowOut on the real distribution (systemd, OpenSSH, cloud-init's
/etc/environment), attacked from guest root as in test_network_policy.py;
and on the same VM (it has no additionalDisks nor virtiofs shares, which
a fork of memory cannot take), forks of its memory: from a suspend and
from a snapshot taken while it runs, each a machine of its own to
OpenSSH's sshd, systemd's host name and the NIC. Root only, as every
test_debian*.py (scripts/test.sh: a normal user's debian-12 image build is
not covered)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import START_TIMEOUT, Roost
from tests.e2e.test_network_policy import (
    host_address,
    only_listed_through_proxy,
    probe,
    serving_host,
)

NAME = "deb-offline"


@pytest.fixture(scope="module")
def offline(roost: Roost) -> Iterator[int]:
    """The cut-off debian-12 VM, running, and the host server it may reach."""
    roost.run("create", NAME, "--template", "debian-12", "--set", "network.internet=false",
              "--set", f"network.allowOut=[{host_address()}]", "--memory", "1GiB",
              "--disk", "4GiB")
    try:
        with serving_host() as port:
            roost.run("start", NAME, "--timeout", str(START_TIMEOUT),
                      timeout=START_TIMEOUT + 30)
            yield port
    finally:
        roost.run("delete", "--force", NAME, timeout=180, check=False)


def test_allow_out_on_debian(roost: Roost, offline: int) -> None:
    """The listed address through the proxy; the host's loopback refused
    there; neither reached around it; logins told of the proxy."""
    only_listed_through_proxy(roost, NAME, offline)
    direct = probe(roost, NAME, offline)
    assert all(v.startswith("no answer") for v in direct.values()), direct
    env = roost.run("shell", NAME, "--", "sh", "-c", "echo $https_proxy").stdout
    assert env.strip() == "http://127.0.0.1:3128", env


def sh(roost: Roost, name: str, script: str) -> str:
    return roost.run("shell", name, "--", "sudo", "sh", "-c", script).stdout


def identity(roost: Roost, name: str) -> tuple[str, str, str]:
    """What the guest says it is: host name (systemd's and the kernel's),
    MAC, and the SSH host key sshd serves (as the host's client saw it)."""
    names = sh(roost, name, "hostnamectl hostname; hostname; cat /etc/hostname").split()
    assert len(set(names)) == 1, names
    mac = sh(roost, name, 'for i in /sys/class/net/*; do [ "${i##*/}" = lo ] || '
                          'cat "$i/address"; done').strip()
    key = (roost.home / name / "ssh_host_ed25519_key.pub").read_text().split()[1]
    return names[0], mac, key


@pytest.mark.parametrize("kind", ["suspend", "snapshot"])
def test_a_memory_fork_on_debian_is_a_machine_of_its_own(roost: Roost, offline: int,
                                                         kind: str) -> None:
    fork = f"deb-fork-{kind}"
    sh(roost, NAME, "echo in-ram > /run/fork-mark; "
                    "setsid sleep 3000 </dev/null >/dev/null 2>&1 & echo $! > /run/fork-pid")
    source = identity(roost, NAME)
    if kind == "suspend":
        roost.run("suspend", NAME, timeout=300)
        roost.run("fork", NAME, fork)
    else:
        roost.run("snapshot", "create", NAME, "--tag", "for-fork", timeout=300)
        sh(roost, NAME, "rm /run/fork-mark")
        roost.run("fork", NAME, fork, "--snapshot", "for-fork", timeout=300)
    try:
        roost.run("start", fork, "--timeout", str(START_TIMEOUT), timeout=START_TIMEOUT + 30)
        # roost shell pins the fork's host key: sshd serves it, or this fails.
        assert sh(roost, fork, "cat /run/fork-mark; kill -0 $(cat /run/fork-pid) && "
                               "echo alive").split() == ["in-ram", "alive"]
        mine = identity(roost, fork)
        assert mine[0] == fork and mine[1] != source[1] and mine[2] != source[2]
        only_listed_through_proxy(roost, fork, offline)  # its NIC answers as the new MAC
        if kind == "suspend":
            roost.run("start", NAME, "--timeout", str(START_TIMEOUT), timeout=START_TIMEOUT + 30)
        assert identity(roost, NAME) == source
        expected = "in-ram" if kind == "suspend" else "gone"  # removed after the snapshot
        assert sh(roost, NAME, "cat /run/fork-mark 2>/dev/null || echo gone").strip() == expected
    finally:
        roost.run("delete", "--force", fork, timeout=180, check=False)
        sh(roost, NAME, "kill $(cat /run/fork-pid) 2>/dev/null; rm -f /run/fork-mark")
        if kind == "snapshot":
            roost.run("snapshot", "delete", NAME, "--tag", "for-fork", timeout=120, check=False)
