"""roost.yaml's lifecycle:, enforced by the host agent with no one asking:
an idle sandbox suspended, a timed-out one stopped or deleted (a protected
one stopped instead)."""

from __future__ import annotations

import json
import time

from tests.e2e.conftest import START_TIMEOUT, Roost, wait_until


def boot(roost: Roost, name: str, *sets: str) -> float:
    """Create and start `name` with these --set values; when it was Running."""
    args = [a for s in sets for a in ("--set", s)]
    roost.run("create", name, *args, "--memory", "512MiB", "--disk", "4GiB")
    roost.run("start", name, "--timeout", str(START_TIMEOUT), timeout=START_TIMEOUT + 30)
    return time.monotonic()


def status(roost: Roost, name: str) -> str | None:
    row = roost.ls().get(name)
    return None if row is None else str(row["status"])


def lifecycle_events(roost: Roost, name: str) -> list[dict[str, str]]:
    log = roost.home / name / "ha.stdout.log"
    return [e["status"]["lifecycle"] for e in map(json.loads, log.read_text().splitlines())
            if "lifecycle" in e.get("status", {})]


def test_an_idle_sandbox_is_suspended_and_resumes(roost: Roost) -> None:
    name = "idler"
    try:
        running = boot(roost, name, "lifecycle.idle.after=3", "worker.sampleSecs=0.2")
        wait_until(lambda: status(roost, name) == "Suspended", 120, f"{name} to be suspended")
        assert time.monotonic() - running >= 3
        [event] = lifecycle_events(roost, name)
        assert event["action"] == "suspend" and "idle for 3s" in event["reason"]
        roost.run("resume", name, timeout=300)
        assert status(roost, name) == "Running"
    finally:
        roost.run("delete", "--force", name, timeout=120, check=False)


def test_a_timed_out_sandbox_is_stopped(roost: Roost) -> None:
    name = "timer"
    try:
        running = boot(roost, name, "lifecycle.timeout.after=4", "lifecycle.timeout.action=stop")
        wait_until(lambda: status(roost, name) == "Stopped", 120, f"{name} to stop")
        assert time.monotonic() - running >= 4
        assert lifecycle_events(roost, name)[0]["action"] == "stop"
    finally:
        roost.run("delete", "--force", name, timeout=120, check=False)


def test_a_timed_out_sandbox_is_deleted_unless_protected(roost: Roost) -> None:
    gone, kept = "doomed", "kept"
    try:
        boot(roost, gone, "lifecycle.timeout.after=3")  # action: delete, the default
        boot(roost, kept, "lifecycle.timeout.after=10")  # protected well before that
        roost.run("protect", kept)
        wait_until(lambda: status(roost, gone) is None, 120, f"{gone} to be deleted")
        assert not (roost.home / gone).exists()
        wait_until(lambda: status(roost, kept) == "Stopped", 120, f"{kept} to stop")
        assert "protected, so stopped" in lifecycle_events(roost, kept)[0]["reason"]
    finally:
        roost.run("unprotect", kept, check=False)
        for name in (gone, kept):
            roost.run("delete", "--force", name, timeout=120, check=False)
