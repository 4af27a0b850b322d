"""Everyday commands that need no VM: protect/unprotect, start's default name,
and the ssh command line `shell --workdir` runs."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from roost.sshutil.config import ssh_argv
from roost.store.instance import Instance


def roost(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "roost", *args],
                          env={**os.environ, "ROOST_HOME": str(home)},
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_protected_instance_is_not_deleted(tmp_path: Path) -> None:
    assert roost(tmp_path, "create", "keep").returncode == 0
    assert roost(tmp_path, "protect", "keep").returncode == 0
    listed = json.loads(roost(tmp_path, "ls", "--json").stdout)
    assert [(i["name"], i["protected"]) for i in listed] == [("keep", True)]
    for args in (["delete", "keep"], ["delete", "--force", "keep"]):
        proc = roost(tmp_path, *args)
        assert proc.returncode == 1 and "roost unprotect keep" in proc.stderr, proc
        assert (tmp_path / "keep" / "roost.yaml").is_file()
    assert roost(tmp_path, "unprotect", "keep").returncode == 0
    assert roost(tmp_path, "delete", "keep").returncode == 0
    assert not (tmp_path / "keep").exists()
    proc = roost(tmp_path, "protect", "nope")
    assert proc.returncode != 0 and "'nope' does not exist" in proc.stderr


def test_start_without_a_name_means_default() -> None:
    proc = subprocess.run([sys.executable, "-m", "roost", "start", "--help"],
                          capture_output=True, text=True, timeout=60, check=True)
    assert "[NAME]" in proc.stdout and "defaults to `default`" in proc.stdout


def _remote(argv: list[str]) -> list[str]:
    """What the guest's shell runs, as words."""
    return shlex.split(argv[argv.index("--") + 1])


def test_shell_workdir_command_lines(tmp_path: Path) -> None:
    inst = Instance.at("dev", tmp_path)
    plain = ssh_argv(inst, ["ls", "a b"])
    assert _remote(plain) == ["ls", "a b"]
    there = ssh_argv(inst, ["ls", "a b"], workdir="/srv/my dir")
    assert _remote(there) == ["cd", "--", "/srv/my dir", "&&", "exec", "ls", "a b"]
    login = ssh_argv(inst, [], tty=True, workdir="~/src")
    assert "-t" in login
    assert _remote(login) == ["cd", "--", "~/src", "&&", "exec", "${SHELL:-/bin/sh}", "-l"]


def test_ls_formats_and_filters(tmp_path: Path) -> None:
    import yaml

    assert roost(tmp_path, "create", "one").returncode == 0
    assert roost(tmp_path, "create", "two", "--cpus", "1").returncode == 0
    as_json = json.loads(roost(tmp_path, "ls", "--format", "json").stdout)
    assert yaml.safe_load(roost(tmp_path, "ls", "--format", "yaml").stdout) == as_json
    assert [r["name"] for r in as_json] == ["one", "two"]
    picked = json.loads(roost(tmp_path, "ls", "--json", "--filter", "cpus=1").stdout)
    assert [r["name"] for r in picked] == ["two"]
    both = roost(tmp_path, "ls", "--filter", "status=stopped", "--filter", "name=one").stdout
    assert [line.split()[0] for line in both.splitlines()] == ["NAME", "one"]
    proc = roost(tmp_path, "ls", "--filter", "colour=red")
    assert proc.returncode == 2 and "no field 'colour'" in proc.stderr
    proc = roost(tmp_path, "ls", "--filter", "status")
    assert proc.returncode == 2 and "KEY=VALUE" in proc.stderr


def test_rename_a_stopped_instance(tmp_path: Path) -> None:
    assert roost(tmp_path, "create", "old").returncode == 0
    assert roost(tmp_path, "create", "taken").returncode == 0
    proc = roost(tmp_path, "rename", "old", "taken")
    assert proc.returncode == 2 and "exists already" in proc.stderr
    proc = roost(tmp_path, "rename", "old", "Bad Name")
    assert proc.returncode == 2 and "invalid instance name" in proc.stderr
    assert roost(tmp_path, "rename", "old", "new").returncode == 0
    names = [r["name"] for r in json.loads(roost(tmp_path, "ls", "--json").stdout)]
    assert names == ["new", "taken"]
    assert not (tmp_path / "old").exists()


def test_clone_copies_config_and_disk_without_snapshots(tmp_path: Path) -> None:
    assert roost(tmp_path, "create", "src", "--cpus", "1").returncode == 0
    src = tmp_path / "src"
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
                    str(src / "disk.qcow2")], check=True)
    subprocess.run(["qemu-img", "snapshot", "-c", "t1", str(src / "disk.qcow2")], check=True)
    for name in ("instance-id", "ssh_host_ed25519_key", "known_hosts"):
        (src / name).write_text("of the source\n")
    assert roost(tmp_path, "protect", "src").returncode == 0
    proc = roost(tmp_path, "clone", "src", "dst")
    assert proc.returncode == 0, proc.stderr
    dst = tmp_path / "dst"
    assert (dst / "roost.yaml").read_text() == (src / "roost.yaml").read_text()
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(dst / "disk.qcow2")],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["backing-filename"] == str(base) and not info.get("snapshots")
    # What names the machine is not copied; nor is the protection.
    assert sorted(p.name for p in dst.iterdir()) == ["disk.qcow2", "roost.yaml"]
    proc = roost(tmp_path, "clone", "src", "dst")
    assert proc.returncode == 2 and "exists already" in proc.stderr
    proc = roost(tmp_path, "clone", "nope", "other")
    assert proc.returncode == 1 and not (tmp_path / "other").exists()


def test_watch_follows_instances_old_and_new(tmp_path: Path) -> None:
    assert roost(tmp_path, "create", "old").returncode == 0
    (tmp_path / "old" / "ha.stdout.log").write_text(
        json.dumps({"time": "t0", "status": {"phase": "before the watch"}}) + "\n")
    watcher = subprocess.Popen([sys.executable, "-m", "roost", "watch", "--json",
                                "--duration", "6"],
                               env={**os.environ, "ROOST_HOME": str(tmp_path)},
                               stdout=subprocess.PIPE, text=True)
    try:
        import time

        time.sleep(1.5)
        with open(tmp_path / "old" / "ha.stdout.log", "a") as log:
            log.write(json.dumps({"time": "t1", "status": {"phase": "booting"}}) + "\n")
        assert roost(tmp_path, "create", "new").returncode == 0  # after the watch began
        time.sleep(0.5)
        (tmp_path / "new" / "ha.stdout.log").write_text(
            json.dumps({"time": "t2", "status": {"running": True, "phase": "running"}}) + "\n")
        out, _ = watcher.communicate(timeout=30)
    finally:
        watcher.kill()
    seen = [(e["instance"], e["status"]["phase"]) for e in map(json.loads, out.splitlines())]
    assert seen == [("old", "booting"), ("new", "running")]


def test_ssh_config_forwards_the_agent_only_when_asked(tmp_path: Path) -> None:
    from roost.sshutil.config import render_ssh_config

    inst = Instance.at("dev", tmp_path)
    plain = render_ssh_config(inst, 2222, "me", tmp_path / "key")
    lent = render_ssh_config(inst, 2222, "me", tmp_path / "key", forward_agent=True)
    assert {"  ForwardAgent no", "  IdentityAgent none", "  IdentitiesOnly yes"} <= set(
        plain.splitlines())
    # ssh drops SSH_AUTH_SOCK under IdentityAgent none: forwarding needs it reachable.
    assert "  ForwardAgent yes" in lent.splitlines()
    assert "IdentityAgent" not in lent
    assert "  IdentitiesOnly yes" in lent.splitlines()  # the instance's key still logs in


def test_factory_reset_keeps_only_the_configuration(tmp_path: Path) -> None:
    assert roost(tmp_path, "create", "fr").returncode == 0
    inst = tmp_path / "fr"
    config = (inst / "roost.yaml").read_text()
    for name in ("disk.qcow2", "instance-id", "ssh_host_ed25519_key", "ha.stdout.log"):
        (inst / name).write_text("x")
    (inst / "sock").mkdir()
    assert roost(tmp_path, "protect", "fr").returncode == 0
    proc = roost(tmp_path, "factory-reset", "fr")
    assert proc.returncode == 1 and "protected" in proc.stderr
    assert (inst / "disk.qcow2").exists()
    assert roost(tmp_path, "unprotect", "fr").returncode == 0
    proc = roost(tmp_path, "factory-reset", "fr")
    assert proc.returncode == 0 and "5 files removed" in proc.stdout, proc
    assert [p.name for p in inst.iterdir()] == ["roost.yaml"]
    assert (inst / "roost.yaml").read_text() == config
