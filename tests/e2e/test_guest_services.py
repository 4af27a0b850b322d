"""Guest agent services through the CLI: exec (dev only), idle/busy status, logs."""

from __future__ import annotations

import json
import time

from tests.e2e.conftest import START_TIMEOUT, Roost


def test_exec_output_exit_code_and_audit(roost: Roost, vm: str) -> None:
    proc = roost.run("exec", vm, "--", "sh", "-c", "echo out; echo err >&2; exit 7",
                     check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "out\n", "err\n")
    audit = roost.run("exec", vm, "--", "cat", "/var/log/roost/exec.log").stdout
    assert '"exitCode": 7' in audit


def test_exec_timeout(roost: Roost, vm: str) -> None:
    start = time.monotonic()
    proc = roost.run("exec", vm, "--timeout", "1", "--", "sleep", "30", check=False)
    assert proc.returncode == 124 and "killed after 1s" in proc.stderr
    assert time.monotonic() - start < 10


def test_exec_refused_when_disabled(roost: Roost) -> None:
    roost.run("create", "noexec", "--memory", "512MiB", "--disk", "4GiB")
    roost.run("start", "noexec", "--timeout", str(START_TIMEOUT), timeout=START_TIMEOUT + 30)
    try:
        proc = roost.run("exec", "noexec", "--", "true", check=False)
        assert proc.returncode == 2 and "allowExec: true" in proc.stderr
    finally:
        roost.run("delete", "--force", "noexec", timeout=120)


def status(roost: Roost, vm: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(roost.run("status", vm, "--json").stdout)
    return data


def test_busy_while_burning_cpu_then_idle(roost: Roost, vm: str) -> None:
    burn = roost.run("shell", vm, "--", "sh", "-c",
                     "(while :; do :; done) </dev/null >/dev/null 2>&1 & echo $!").stdout.strip()
    try:
        deadline = time.monotonic() + 10
        while status(roost, vm)["state"] != "busy":
            assert time.monotonic() < deadline, "never busy"
            time.sleep(0.2)
    finally:
        roost.run("shell", vm, "--", "kill", burn)
    deadline = time.monotonic() + 10
    while (s := status(roost, vm))["state"] != "idle":
        assert time.monotonic() < deadline, "never idle again"
        time.sleep(0.2)
    assert s["lastBusyAt"] is not None


def test_logs_sources(roost: Roost, vm: str) -> None:
    host = roost.run("logs", vm, "--source", "hostagent", "-n", "5").stdout
    assert host.count("\n") <= 5 and "roost" in host
    agent = roost.run("logs", vm, "--source", "guestagent").stdout
    assert "roost-guestagent: serving" in agent
    roost.run("logs", vm, "--source", "serial")
