"""The built-in image's basics: sudo for the guest user, nohup, pgrep and
pkill, and the other commands shell scripts reach for.

The guest user is whoever runs the tests (root in CI); a non-root user is
made in the guest the way the boot makes the host's, so sudo is exercised
from an unprivileged account either way.
"""

from __future__ import annotations

import getpass
import os

from tests.e2e.conftest import Roost

# Commands a script may expect; the image has each (busybox or Debian's).
SCRIPT_BASICS = [
    "sudo", "nohup", "pgrep", "pkill", "pidwait", "timeout", "env", "xargs", "flock", "setsid",
    "ps", "kill", "install", "getent", "nice", "stdbuf", "printenv", "mountpoint", "bash",
]
TEST_USER, TEST_UID = "roost-e2e-sudo", 4242


def sh(roost: Roost, vm: str, script: str, check: bool = True) -> str:
    return roost.run("shell", vm, "--", "sh", "-c", script, check=check).stdout


def test_guest_user_has_passwordless_sudo(roost: Roost, vm: str) -> None:
    uid = os.getuid()
    out = sh(roost, vm, "id -un; id -u; sudo -n true && sudo -n id -u")
    assert out.split() == [getpass.getuser(), str(uid), "0"]
    # The rule the boot wrote, and sudo as Debian installs it.
    rule = sh(roost, vm, f"sudo -n cat /etc/sudoers.d/roost-user-{uid}")
    assert rule == f"{getpass.getuser()} ALL=(ALL) NOPASSWD:ALL\n"
    modes = sh(roost, vm, f"stat -c '%a %u %g %n' /etc/sudoers.d/roost-user-{uid} "
                          "/etc/sudoers /usr/bin/sudo /usr/libexec/sudo/sudoers.so")
    assert modes.splitlines() == [
        f"440 0 0 /etc/sudoers.d/roost-user-{uid}",
        "440 0 0 /etc/sudoers",
        "4755 0 0 /usr/bin/sudo",
        "644 0 0 /usr/libexec/sudo/sudoers.so",
    ]


def test_a_non_root_user_made_as_the_boot_makes_one_has_sudo(roost: Roost, vm: str) -> None:
    add = f". /usr/lib/roost/user.sh && roost_add_user {TEST_USER} {TEST_UID}"
    try:
        sh(roost, vm, f"sudo -n sh -c '{add}'")
        out = sh(roost, vm, f"sudo -n -u {TEST_USER} sh -c "
                            "'id -un; id -u; sudo -n true && sudo -n id -u'")
        assert out.split() == [TEST_USER, str(TEST_UID), "0"]
    finally:
        sh(roost, vm, f"sudo -n sh -c 'sed -i /^{TEST_USER}:/d /etc/passwd /etc/group "
                      f"/etc/shadow; rm -rf /home/{TEST_USER} "
                      f"/etc/sudoers.d/roost-user-{TEST_UID}'")
    assert TEST_USER not in sh(roost, vm, "cat /etc/passwd")


def test_sudo_refuses_a_user_without_a_rule(roost: Roost, vm: str) -> None:
    proc = roost.run("shell", vm, "--", "sudo", "-n", "-u", "nobody", "sudo", "-n", "true",
                     check=False)
    assert proc.returncode == 1
    assert "a password is required" in proc.stderr


def test_script_basics_are_on_path_and_nohup_runs(roost: Roost, vm: str) -> None:
    out = sh(roost, vm, f"for c in {' '.join(SCRIPT_BASICS)}; do "
                        "command -v $c >/dev/null || echo missing $c; done; "
                        "nohup sh -c 'echo hi' >/dev/null 2>&1; echo nohup=$?")
    assert out == "nohup=0\n"


def test_pgrep_and_pkill_find_and_kill_a_sleep(roost: Roost, vm: str) -> None:
    pattern = "'^sleep 4243$'"  # anchored: the shells running pgrep match no more
    pid = sh(roost, vm, "nohup sleep 4243 </dev/null >/dev/null 2>&1 & echo $!").strip()
    try:
        assert sh(roost, vm, f"pgrep -f {pattern}").split() == [pid]
        assert sh(roost, vm, "pgrep -a -x sleep").count(f"{pid} sleep 4243\n") == 1
        # Gone once init has reaped it; pgrep then finds nothing.
        out = sh(roost, vm, f"pkill -f {pattern}; echo pkill=$?; i=0; "
                            f"while kill -0 {pid} 2>/dev/null && [ $i -lt 50 ]; do "
                            "usleep 100000; i=$((i + 1)); done; "
                            f"kill -0 {pid} 2>/dev/null; echo alive=$?; "
                            f"pgrep -f {pattern}; echo pgrep=$?")
        assert out == "pkill=0\nalive=1\npgrep=1\n"
    finally:
        sh(roost, vm, f"kill {pid} 2>/dev/null; true")
