"""The shared VM's life: shell, ls, info, restart keeping a file.

Tests run in file order and share one instance; each leaves it running.
(test_zz_faults.py kills and deletes it, last.)
"""

from __future__ import annotations

import json
import os
import stat

from tests.e2e.conftest import START_TIMEOUT, Roost, pid_running


def start(roost: Roost, name: str) -> None:
    roost.run("start", name, "--timeout", str(START_TIMEOUT), timeout=START_TIMEOUT + 30)


def test_shell_runs_a_command(roost: Roost, vm: str) -> None:
    out = roost.run("shell", vm, "--", "uname", "-a").stdout
    assert out.startswith(f"Linux {vm} ")
    assert "x86_64" in out


def test_shell_passes_exit_status_and_quotes_words(roost: Roost, vm: str) -> None:
    proc = roost.run("shell", vm, "--", "sh", "-c", "echo 'a b'; exit 7", check=False)
    assert proc.returncode == 7
    assert proc.stdout == "a b\n"
    assert roost.run("shell", vm, "--", "id", "-u").stdout.strip() == str(os.getuid())


def test_ls_json_fields(roost: Roost, vm: str) -> None:
    row = roost.ls()[vm]
    assert row["status"] == "Running"
    assert row["cpus"] == 2
    assert row["memory"] == 1024**3
    assert row["disk"] == 4 * 1024**3
    assert row["dir"] == str(roost.home / vm)
    assert isinstance(row["sshLocalPort"], int) and row["sshLocalPort"] > 0
    table = roost.run("ls").stdout
    assert vm in table and "Running" in table


def test_info_and_api_socket(roost: Roost, vm: str) -> None:
    info = json.loads(roost.run("info", vm, "--json").stdout)
    assert info["hostagent"]["driver"]["name"] == "qemu"
    reqs = {r["name"]: r for r in info["hostagent"]["requirements"]}
    assert reqs["ssh-banner"]["ok"] and reqs["ssh"]["ok"]
    mode = stat.S_IMODE((roost.home / vm / "ha.sock").stat().st_mode)
    assert mode == 0o600


def test_delete_refuses_a_running_instance(roost: Roost, vm: str) -> None:
    proc = roost.run("delete", vm, check=False)
    assert proc.returncode != 0 and "--force" in proc.stderr
    assert (roost.home / vm / "roost.yaml").exists()


def test_file_survives_restart_and_concurrent_start_has_one_winner(roost: Roost, vm: str) -> None:
    roost.run("shell", vm, "--", "sh", "-c", "echo persisted > ~/note.txt && sync")
    qemu_pid = roost.pid(vm, "qemu.pid")
    roost.run("stop", vm)
    assert roost.ls()[vm]["status"] == "Stopped"
    assert not pid_running(qemu_pid)
    assert not (roost.home / vm / "qmp.sock").exists()

    first, second = roost.popen("start", vm), roost.popen("start", vm)
    results = [(p.wait(timeout=START_TIMEOUT), p.communicate()) for p in (first, second)]
    codes = sorted(rc for rc, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    loser_err = next(err for rc, (_, err) in results if rc != 0)
    assert "already" in loser_err, loser_err
    assert roost.run("shell", vm, "--", "cat", "note.txt").stdout == "persisted\n"
