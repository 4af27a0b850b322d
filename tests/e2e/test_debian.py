"""A real distribution: the debian-12 template (systemd, OpenSSH, sudo, the
real cloud-init from roost's NoCloud seed), with every roost feature on it.

One VM for the module: a TCG boot of it takes a minute or two.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import test_hostile_guest as hostile
from tests.e2e.conftest import START_TIMEOUT, Roost, assert_guest_clock_is_the_hosts, wait_until
from tests.e2e.hostdns import (
    HOST_ADDRESS,
    HOSTS_ADDRESS,
    HOSTS_NAME,
    guest_getent,
    guest_query,
    host_only_name,
    resolver_port,
    stand_in_resolver,
)
from tests.e2e.test_copy import guest_digests, make_tree
from tests.e2e.tls import CA, GUEST_SEES_HOST, https_server, make_ca, server_certificate

NAME = "deb"
GUEST_HTTP_PORT = 18090
STATIC_GUEST = "/mnt/static"
DEB_DISK = "debdata"


def host_user() -> tuple[str, int]:
    return pwd.getpwuid(os.getuid()).pw_name, os.getuid()


@pytest.fixture(scope="module")
def share(roost: Roost) -> Path:
    d = roost.home / "deb-share"
    d.mkdir(exist_ok=True)
    (d / "hello.txt").write_text("from the host\n")
    return d


@pytest.fixture(scope="module")
def trusted_ca(roost: Roost) -> CA:
    return make_ca(roost.home / "deb-tls", "deb-ca")


@pytest.fixture(scope="module")
def debian(roost: Roost, share: Path, trusted_ca: CA) -> Iterator[str]:
    config = roost.home / "deb.yaml"
    config.write_text(
        "base: debian-12\n"
        "guestAgent:\n  allowExec: true\n  allowFiles: true\n"
        # removeDefaults: update-ca-certificates then has one certificate to
        # link, not Debian's 140 (a minute of first boot under TCG).
        f"caCerts:\n  removeDefaults: true\n  files:\n    - {trusted_ca.cert}\n"
        f"additionalDisks:\n  - {DEB_DISK}\n"
        "env:\n  ROOST_E2E_VAR: from-roost-yaml\n"
        f"hostResolver:\n  hosts:\n    {HOSTS_NAME}: {HOSTS_ADDRESS}\n"
        "mounts:\n"
        f"  - location: {share}\n    mountPoint: {STATIC_GUEST}\n    writable: true\n"
        "healthChecks:\n"
        "  - name: marker\n    healthCmd: test -e /tmp/healthy\n    healthIntervalSecs: 1\n"
        "provision:\n"
        "  - mode: user\n    script: |\n      id -un > /tmp/user-step\n"
        "  - mode: system\n    script: |\n      id -un > /tmp/system-step\n"
        "  - mode: data\n    path: /etc/roost-e2e-data\n    content: \"data step\\n\"\n"
        "    permissions: \"600\"\n"
        "  - mode: boot\n    script: |\n"
        "      cat /proc/sys/kernel/random/boot_id > /run/boot-step\n"
        "copyToHost:\n"
        "  - guest: /etc/roost-e2e-data\n    host: \"{{.Dir}}/copied/data.txt\"\n"
        "    deleteOnStop: true\n"
    )
    roost.run("disk", "create", DEB_DISK, "--size", "256MiB")
    roost.run("create", NAME, "--config", str(config), "--memory", "1GiB", "--disk", "4GiB")
    roost.run("start", NAME, "--timeout", str(START_TIMEOUT), timeout=START_TIMEOUT + 30)
    try:
        yield NAME
    finally:
        roost.run("delete", "--force", NAME, timeout=180, check=False)
        roost.run("disk", "delete", DEB_DISK, check=False)


def sh(roost: Roost, script: str, check: bool = True) -> str:
    proc = roost.run("shell", NAME, "--", "sh", "-c", script, check=check, timeout=120)
    return proc.stdout if check else proc.stdout + proc.stderr


# The guest verifies a server's certificate against its CA bundle (Python's
# ssl: OpenSSL's default paths, i.e. /etc/ssl/certs).
FETCH = ("python3 -c 'import sys, urllib.request; "
         "print(urllib.request.urlopen(sys.argv[1], timeout=30).read().decode())' ")


def test_the_guest_resolves_as_the_host_does(roost: Roost, debian: str) -> None:
    """hostResolver on a real cloud image: roost-dns's nft DNAT sends what
    the guest asks of its DNS address (resolv.conf, from cloud-init's
    network config) to the host agent's server, over UDP and TCP."""
    assert sh(roost, "cat /run/roost/dns").startswith(f"nft {HOST_ADDRESS}:")
    assert guest_getent(roost, debian, "host.roost.internal") == [HOST_ADDRESS]
    assert guest_getent(roost, debian, HOSTS_NAME) == [HOSTS_ADDRESS]
    name, want = host_only_name()
    assert guest_getent(roost, debian, name) == want
    for proto in ("udp", "tcp"):
        assert guest_query(roost, debian, HOSTS_NAME, "192.168.5.3", "53", proto) == {
            "rcode": 0, "a": [HOSTS_ADDRESS]}


def test_a_restored_guest_s_dns_moves_to_another_port(roost: Roost, debian: str) -> None:
    """What a fork's guest (or one resumed while its resolver's port is
    taken) is asked on wake: identity.redirect_dns re-runs roost-dns's nft
    DNAT to the port given, here a stand-in resolver's, then back."""
    move = ("sudo python3 -S -c 'import sys; sys.path.insert(0, "
            "\"/usr/local/lib/roost/roost-guestagent.pyz\"); from roost_guest import identity; "
            "print(identity.redirect_dns(int(sys.argv[1])))' ")
    port = resolver_port(roost, debian)
    with stand_in_resolver("10.77.0.1") as stand_in:
        try:
            assert sh(roost, move + str(stand_in)) == f"nft {HOST_ADDRESS}:{stand_in}\n"
            rules = sh(roost, "sudo nft list table ip roost_dns")
            assert f"dnat to {HOST_ADDRESS}:{stand_in}" in rules
            assert guest_getent(roost, debian, HOSTS_NAME) == ["10.77.0.1"]
        finally:
            assert sh(roost, move + str(port)) == f"nft {HOST_ADDRESS}:{port}\n"
    assert guest_getent(roost, debian, HOSTS_NAME) == [HOSTS_ADDRESS]
    assert "not redirected" in sh(roost, "sudo mv /run/roost/roost-dns /run/roost/roost-dns.away; "
                                  + move + "1 2>&1; sudo mv /run/roost/roost-dns.away "
                                  "/run/roost/roost-dns", check=False)


def test_rsync_and_ansible_through_the_ssh_config(roost: Roost, debian: str,
                                                  tmp_path: Path) -> None:
    """`ssh -F ~/.roost/NAME/ssh.config roost-NAME` as other OpenSSH tools use
    it, against the real distribution: `roost copy --backend rsync`, rsync
    over ssh by hand, and Ansible (its own ssh arguments off, so it starts no
    ControlPersist master of its own that would outlive the test)."""
    config, host = str(roost.home / debian / "ssh.config"), f"roost-{debian}"
    want = make_tree(tmp_path / "tree")
    roost.run("copy", "--backend", "rsync", "-r", str(tmp_path / "tree"), f"{debian}:/tmp/by-roost",
              timeout=120)
    assert guest_digests(roost, debian, "/tmp/by-roost") == want
    subprocess.run(["rsync", "-a", "-e", f"ssh -F {config}", f"{tmp_path / 'tree'}/",
                    f"{host}:/tmp/by-rsync/"], check=True, capture_output=True, timeout=120)
    assert guest_digests(roost, debian, "/tmp/by-rsync") == want
    assert sh(roost, "test -x /tmp/by-rsync/'sub dir'/deeper/tool.sh && echo x") == "x\n"
    env = {**os.environ, "ANSIBLE_HOME": str(tmp_path / "ansible"),
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"), "ANSIBLE_SSH_ARGS": "",
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_PYTHON_INTERPRETER": "auto_silent"}
    common = ["-i", f"{host},", "--ssh-common-args", f"-F {config}"]
    ping = subprocess.run(["ansible", "all", *common, "-m", "ping"], env=env,
                          capture_output=True, text=True, timeout=180)
    assert ping.returncode == 0 and '"ping": "pong"' in ping.stdout, ping.stdout + ping.stderr
    become = subprocess.run(["ansible", "all", *common, "--become", "-m", "command",
                             "-a", "id -u"], env=env, capture_output=True, text=True, timeout=180)
    assert become.returncode == 0 and become.stdout.strip().endswith("0"), \
        become.stdout + become.stderr


def test_ca_certs_are_trusted_by_the_guest(roost: Roost, debian: str, trusted_ca: CA) -> None:
    """caCerts through real cloud-init (update-ca-certificates): a server whose
    certificate the CA signed is verified; one of another CA is refused; with
    removeDefaults the image's own CAs are gone from the bundle."""
    d = trusted_ca.cert.parent
    with https_server(*server_certificate(trusted_ca, d, "trusted")) as port:
        assert "hello over tls" in sh(roost, FETCH + f"https://{GUEST_SEES_HOST}:{port}/")
    stranger = make_ca(d, "stranger-ca")
    with https_server(*server_certificate(stranger, d, "stranger")) as port:
        out = sh(roost, FETCH + f"https://{GUEST_SEES_HOST}:{port}/", check=False)
        assert "CERTIFICATE_VERIFY_FAILED" in out, out
    bundle = sh(roost, "cat /etc/ssl/certs/ca-certificates.crt")
    assert bundle.count("BEGIN CERTIFICATE") == 1, "only caCerts' CA is trusted"
    assert trusted_ca.cert.read_text().strip() in bundle


def test_additional_disk_is_made_and_mounted(roost: Roost, debian: str) -> None:
    """additionalDisks from cloud-init's bootcmd (roost-boot): ext4 made on the
    blank disk, mounted at /mnt/roost-NAME, writable by root."""
    mounts = sh(roost, "cat /proc/mounts")
    assert any(line.split()[1:3] == [f"/mnt/roost-{DEB_DISK}", "ext4"]
               for line in mounts.splitlines()), mounts
    out = sh(roost, f"echo on-disk | sudo tee /mnt/roost-{DEB_DISK}/marker >/dev/null && "
                    f"cat /mnt/roost-{DEB_DISK}/marker")
    assert out == "on-disk\n"


def test_running_not_degraded_from_cloud_init(roost: Roost, debian: str) -> None:
    row = roost.ls()[debian]
    assert row["status"] == "Running", row
    assert row["degradedBy"] == []
    status = sh(roost, "cloud-init status --long")
    assert "status: done" in status
    assert "DataSourceNoCloud" in status or "NoCloud" in sh(
        roost, "sudo -n cat /run/cloud-init/result.json")
    assert "systemd" in sh(roost, "ps -p 1 -o comm=")
    # cloud-init grew the root partition and file system to the 4 GiB disk.
    root_kib = int(sh(roost, "df -k --output=size / | tail -n 1"))
    assert root_kib > 3.5 * 1024**2, root_kib
    # Exit 0 and cloud-init's word for it ("Valid cloud-config" in 22.4).
    assert "Valid" in sh(roost, "sudo -n cloud-init schema --system 2>&1")
    info = json.loads(roost.run("info", debian, "--json").stdout)
    reqs = {r["name"]: r for r in info["hostagent"]["requirements"]}
    assert reqs["cloud-init"]["ok"] and reqs["guest-agent"]["ok"], reqs


def test_building_the_image_left_the_hosts_apt_lists_alone(debian: str) -> None:
    # mmdebstrap's cleanup once ran apt-get update with the host's config.
    assert subprocess.run(["apt-cache", "show", "cloud-init"], capture_output=True,
                          timeout=60).returncode == 0


def test_the_host_user_with_sudo_and_the_hostname(roost: Roost, debian: str) -> None:
    name, uid = host_user()
    assert sh(roost, "id -un; id -u").split() == [name, str(uid)]
    assert sh(roost, "hostname").strip() == debian
    assert sh(roost, "sudo -n id -u").strip() == "0"
    assert sh(roost, "echo $ROOST_E2E_VAR").strip() == "from-roost-yaml"


def test_each_provisioning_mode_ran_as_its_user(roost: Roost, debian: str) -> None:
    name, _ = host_user()
    assert sh(roost, "cat /tmp/user-step").strip() == name
    assert sh(roost, "cat /tmp/system-step").strip() == "root"
    assert sh(roost, "sudo -n cat /etc/roost-e2e-data") == "data step\n"
    assert sh(roost, "stat -c '%a %U' /etc/roost-e2e-data").split() == ["600", "root"]
    # `boot` runs in cloud-init's bootcmd: this boot.
    assert sh(roost, "cat /run/boot-step") == sh(roost, "cat /proc/sys/kernel/random/boot_id")


def test_copy_to_host(roost: Roost, debian: str) -> None:
    copied = roost.home / debian / "copied" / "data.txt"
    assert copied.read_text() == "data step\n"


def test_guest_loopback_server_reaches_the_host_through_the_agent(
        roost: Roost, debian: str) -> None:
    sh(roost, f"nohup python3 -m http.server {GUEST_HTTP_PORT} --bind 127.0.0.1 "
              ">/dev/null 2>&1 </dev/null & echo $! > /tmp/http.pid")

    def forwarded() -> bool:
        forwards = roost.ls()[debian]["portForwards"]
        return any(f.get("guestPort") == GUEST_HTTP_PORT or
                   str(f.get("guestAddr", "")).endswith(f":{GUEST_HTTP_PORT}")
                   for f in forwards)

    wait_until(forwarded, 30, "the guest's port forwarded")
    fwd = [f for f in roost.ls()[debian]["portForwards"]
           if str(f.get("guestAddr", "")).endswith(f":{GUEST_HTTP_PORT}")]
    assert fwd and fwd[0]["via"] == "agent", fwd
    with socket.create_connection(("127.0.0.1", GUEST_HTTP_PORT), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        s.settimeout(20)
        assert s.recv(12).startswith(b"HTTP/1.0 200")
    sh(roost, "kill $(cat /tmp/http.pid)")


def test_static_and_hot_mounts_both_ways(roost: Roost, debian: str, share: Path,
                                         tmp_path: Path) -> None:
    assert sh(roost, f"cat {STATIC_GUEST}/hello.txt") == "from the host\n"
    sh(roost, f"echo from the guest > {STATIC_GUEST}/back.txt")
    assert (share / "back.txt").read_text() == "from the guest\n"
    for kind in ("virtiofs", "reverse-sshfs"):
        hot = tmp_path / kind
        hot.mkdir()
        (hot / "in.txt").write_text(f"{kind} in\n")
        point = f"/mnt/hot-{kind}"
        roost.run("mount", "add", debian, str(hot), point, "--type", kind, "--writable")
        assert sh(roost, f"cat {point}/in.txt") == f"{kind} in\n"
        sh(roost, f"echo out > {point}/out.txt")
        assert (hot / "out.txt").read_text() == "out\n"
        roost.run("mount", "remove", debian, point)
    refused = roost.run("mount", "add", debian, str(tmp_path), "/mnt/nine", "--type", "9p",
                        check=False)
    assert refused.returncode != 0 and "9p" in refused.stderr


# -- guest root on debian-12: test_hostile_guest.py's share attacks --------------

hostile_dir = hostile.hostile_dir  # the fixture, for this module


@pytest.mark.parametrize("kind", ["virtiofs", "reverse-sshfs"])
def test_guest_root_is_held_to_the_shares(roost: Roost, debian: str, hostile_dir: Path,
                                          kind: str) -> None:
    """Guest root on a systemd/OpenSSH/cloud-init guest: a read-only hot-mount
    remounted read-write, links out of a share, a setuid program planted in a
    share the host user owns; the same attacks and record as on the built-in
    image (tests/.results/hostile.json, names prefixed debian-12/)."""
    assert sh(roost, "id -u") == "0\n", "the attacks need guest root (CI's root pass)"
    with hostile.attacks_on("debian-12"):
        hostile.test_read_only_hot_mount_remounted_read_write(roost, debian, hostile_dir, kind)
        hostile.test_symlinks_out_of_a_share(roost, debian, hostile_dir, kind)
        hostile.test_setuid_program_planted_in_a_writable_share(
            roost, debian, hostile_dir, kind, hostile.UNUSED_UID)
    if kind == "virtiofs":
        with hostile.attacks_on("debian-12"):
            hostile.test_forged_owners_through_virtiofs(roost, debian, hostile_dir)


def test_health_check_and_exec(roost: Roost, debian: str) -> None:
    def health() -> str:
        checks = json.loads(roost.run("health", debian, "--json").stdout)
        rows = checks.get("checks", checks) if isinstance(checks, dict) else checks
        return str(next(c["status"] for c in rows if c["name"] == "marker"))

    sh(roost, "touch /tmp/healthy")
    wait_until(lambda: health() == "healthy", 30, "the health check to pass")
    out = roost.run("exec", debian, "--", "sh", "-c", "id -u; echo exec-ok")
    assert out.stdout.split() == ["0", "exec-ok"]


def test_the_sdk_on_debian(roost: Roost, debian: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """roost.sdk against systemd, cloud-init's users and a real shell: commands
    streamed with exit codes and stdin, a pty, files (10 MB, mode, owner,
    watch) through the guest agent."""
    from roost.sdk import Sandbox

    monkeypatch.setenv("ROOST_HOME", str(roost.home))
    sb = Sandbox.connect(debian)
    try:
        chunks: list[bytes] = []
        result = sb.commands.run("echo one; sleep 0.3; echo two; echo err >&2; exit 4",
                                 on_stdout=chunks.append)
        assert (result.exit_code, result.stdout, result.stderr) == (4, b"one\ntwo\n",
                                                                     b"err\n")
        assert len(chunks) >= 2
        assert sb.commands.run(["sh", "-c", "echo $ROOST_E2E_VAR"]).text == "from-roost-yaml\n"
        data = os.urandom(10 * 1024 * 1024)
        assert sb.commands.run(["sha256sum"], stdin=data).text.split()[0] == \
            hashlib.sha256(data).hexdigest()
        user, _ = host_user()
        home = sb.commands.run(["sh", "-c", f"getent passwd {user} | cut -d: -f6"]).text.strip()
        sb.files.write(f"{home}/sdk.bin", data, mode=0o640)
        assert sb.files.read(f"{home}/sdk.bin") == data
        assert sb.commands.run(["stat", "-c", "%a %U", f"{home}/sdk.bin"]).text == \
            f"640 {user}\n"
        with sb.files.watch(home) as watch:
            sb.commands.run(["su", "-", user, "-c", "echo hi > ~/sdk-watched.txt"])
            change = watch.next(timeout=30)
            assert (change.path, change.kind) == (f"{home}/sdk-watched.txt", "created")
        screen = bytearray()
        term = sb.commands.pty(["/bin/bash", "--norc"], rows=33, cols=99, on_data=screen.extend)
        term.send_stdin("stty size; exit 3\n")
        assert term.wait(timeout=60).exit_code == 3 and b"33 99" in screen
        term.close()
        sb.files.remove(f"{home}/sdk.bin")
        sb.files.remove(f"{home}/sdk-watched.txt")
    finally:
        sb.close()


def test_snapshot_and_suspend_resume(roost: Roost, debian: str) -> None:
    sh(roost, "echo before > /tmp/snap-marker; sync")
    roost.run("snapshot", "create", debian, "--tag", "s1", timeout=300)
    assert "s1" in roost.run("snapshot", "list", debian).stdout
    sh(roost, "nohup sleep 100000 >/dev/null 2>&1 </dev/null & echo $! > /tmp/sleeper.pid")
    pid = sh(roost, "cat /tmp/sleeper.pid").strip()
    roost.run("suspend", debian, timeout=300)
    assert roost.ls()[debian]["status"] == "Suspended"
    started = time.monotonic()
    roost.run("resume", debian, timeout=300)
    assert time.monotonic() - started < 60
    assert sh(roost, f"kill -0 {pid} && echo alive").strip() == "alive"
    roost.run("snapshot", "delete", debian, "--tag", "s1", timeout=300)


def test_zz_a_file_survives_stop_and_start(roost: Roost, debian: str) -> None:
    sh(roost, "echo kept > ~/kept.txt; sync")
    copied = roost.home / debian / "copied" / "data.txt"
    roost.run("stop", debian, timeout=180)
    assert roost.ls()[debian]["status"] == "Stopped"
    assert not copied.exists()  # deleteOnStop
    roost.run("start", debian, "--timeout", str(START_TIMEOUT), timeout=START_TIMEOUT + 30)
    assert sh(roost, "cat ~/kept.txt") == "kept\n"
    assert roost.ls()[debian]["status"] == "Running"
    assert copied.read_text() == "data step\n"


def test_zz_a_failing_step_makes_it_degraded_with_the_reason(roost: Roost, debian: str) -> None:
    config = roost.home / debian / "roost.yaml"
    config.write_text(config.read_text().replace(
        "provision:\n", "provision:\n- mode: system\n  script: exit 7\n", 1))
    roost.run("stop", debian, timeout=180)
    started = roost.run("start", debian, "--timeout", str(START_TIMEOUT),
                        timeout=START_TIMEOUT + 30)
    assert "provisioning step" in started.stderr and "failed" in started.stderr
    row = roost.ls()[debian]
    assert row["status"] == "Degraded" and row["degradedBy"] == ["cloud-init"], row


def test_the_guest_clock_is_the_hosts(roost: Roost, debian: str) -> None:
    """The host agent sets the guest's clock when the guest agent first
    answers: the RTC it booted from has whole seconds only, and no NTP
    reaches it here (a certificate made on the host just now was "not yet
    valid" in the guest)."""
    assert_guest_clock_is_the_hosts(roost, debian)
