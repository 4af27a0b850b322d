"""Snapshots: with VM state while running (savevm/loadvm over QMP), disk-only
when a shared-folder device blocks saving VM state, and with qemu-img while
stopped."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import START_TIMEOUT, Roost, small_vm
from tests.e2e.hostdns import HOSTS_ADDRESS, HOSTS_NAME, guest_getent, resolver_port


@pytest.fixture(scope="module")
def small(roost: Roost, vm: str) -> Iterator[str]:
    with small_vm(roost, "snap", "--set",
                  f"hostResolver.hosts={{{HOSTS_NAME}: {HOSTS_ADDRESS}}}") as name:
        yield name


def snaps(roost: Roost, name: str) -> dict[str, dict[str, object]]:
    return {s["tag"]: s for s in json.loads(roost.run("snapshot", "list", name, "--json").stdout)}


def test_running_snapshot_restores_files_and_processes(roost: Roost, small: str) -> None:
    roost.run("shell", small, "--", "sh", "-c", "echo before > state; sync")
    pid = roost.run("shell", small, "--", "sh", "-c",
                    "sleep 10000 </dev/null >/dev/null 2>&1 & echo $!").stdout.strip()
    roost.run("snapshot", "create", small, "--tag", "live", timeout=300)
    assert snaps(roost, small)["live"]["vmStateSize"]
    roost.run("shell", small, "--", "sh", "-c", f"echo after > state; kill {pid}")
    roost.run("snapshot", "apply", small, "--tag", "live", timeout=300)
    assert roost.run("shell", small, "--", "cat", "state").stdout == "before\n"
    # The process killed after the snapshot runs again: memory came back too.
    assert roost.run("shell", small, "--", "kill", "-0", pid, check=False).returncode == 0
    assert roost.ls()[small]["status"] == "Running"
    roost.run("snapshot", "delete", small, "--tag", "live", timeout=120)
    assert "live" not in snaps(roost, small)


def test_a_snapshot_of_an_earlier_run_resolves_through_this_one(roost: Roost,
                                                                small: str) -> None:
    """Each start serves hostResolver on a new port; the guest a snapshot of
    an earlier run brings back names that run's, and is moved to this one's."""
    roost.run("snapshot", "create", small, "--tag", "earlier", timeout=300)
    earlier = resolver_port(roost, small)
    roost.run("stop", small, timeout=120)
    roost.run("start", small, "--timeout", str(START_TIMEOUT), timeout=START_TIMEOUT + 30)
    assert resolver_port(roost, small) != earlier
    roost.run("snapshot", "apply", small, "--tag", "earlier", timeout=300)
    assert guest_getent(roost, small, HOSTS_NAME) == [HOSTS_ADDRESS]
    roost.run("snapshot", "delete", small, "--tag", "earlier", timeout=120)


def test_stopped_snapshot_apply(roost: Roost, small: str) -> None:
    roost.run("shell", small, "--", "sh", "-c", "echo v1 > disk-state; sync")
    roost.run("stop", small, timeout=120)
    roost.run("snapshot", "create", small, "--tag", "cold")
    roost.run("start", small, "--timeout", str(START_TIMEOUT), timeout=START_TIMEOUT + 30)
    roost.run("shell", small, "--", "sh", "-c", "echo v2 > disk-state; sync")
    roost.run("stop", small, timeout=120)
    roost.run("snapshot", "apply", small, "--tag", "cold")
    roost.run("start", small, "--timeout", str(START_TIMEOUT), timeout=START_TIMEOUT + 30)
    assert roost.run("shell", small, "--", "cat", "disk-state").stdout == "v1\n"
    assert not snaps(roost, small)["cold"]["vmStateSize"]


def test_virtiofs_makes_running_snapshots_disk_only(roost: Roost, vm: str) -> None:
    out = roost.run("snapshot", "create", vm, "--tag", "withfs", timeout=300).stdout
    assert "disk only" in out
    proc = roost.run("snapshot", "apply", vm, "--tag", "withfs", check=False)
    assert proc.returncode == 2 and "stop the instance" in proc.stderr
    roost.run("snapshot", "delete", vm, "--tag", "withfs", timeout=120)


def test_bad_snapshot_requests(roost: Roost, small: str) -> None:
    assert roost.run("snapshot", "create", small, "--tag", "no spaces",
                     check=False).returncode == 2
    proc = roost.run("snapshot", "apply", small, "--tag", "missing", check=False)
    assert proc.returncode == 2 and "no snapshot 'missing'" in proc.stderr
