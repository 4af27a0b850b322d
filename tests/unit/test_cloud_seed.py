"""The NoCloud seed and roost's provisioning script, run for real with /bin/sh."""

from __future__ import annotations

import os
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import yaml

from roost.cidata import files_for, provision_files
from roost.cidata.identity import GuestIdentity
from roost.config.model import Provision
from roost.sshutil.keys import ensure_host_key


@cache
def host_key() -> tuple[str, str]:
    return ensure_host_key(Path(tempfile.mkdtemp()) / "host_key", "test")


def ident(**kw: object) -> GuestIdentity:
    private, public = host_key()
    base: dict[str, object] = dict(
        instance_id="i-boot1", hostname="dev", user="alice", uid=1234,
        authorized_keys=["ssh-ed25519 AAAA roost"], host_private_key=private,
        host_public_key=public, cloud_instance_id="roost-dev-1",
        mac="52:55:55:01:02:03", timezone="Europe/Berlin")
    base.update(kw)
    return GuestIdentity(**base)  # type: ignore[arg-type]


def user_data(i: GuestIdentity) -> dict[str, object]:
    text = files_for(i)["user-data"].decode()
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def test_user_data_makes_the_host_user_with_sudo_and_pinned_host_key() -> None:
    doc = user_data(ident())
    users = doc["users"]
    assert isinstance(users, list) and len(users) == 1
    user = users[0]
    assert user["name"] == "alice" and user["uid"] == 1234
    assert user["sudo"] == "ALL=(ALL) NOPASSWD:ALL" and user["lock_passwd"] is True
    assert user["ssh_authorized_keys"] == ["ssh-ed25519 AAAA roost"]
    assert doc["ssh_keys"] == {"ed25519_private": host_key()[0],
                               "ed25519_public": host_key()[1]}
    assert "ssh_genkeytypes" not in doc  # cloud-init makes no others when keys are given
    assert doc["disable_root"] is True and doc["timezone"] == "Europe/Berlin"
    assert "roost-boot" in str(doc["bootcmd"])


def test_root_gets_the_key_and_no_default_user() -> None:
    doc = user_data(ident(user="root", uid=0))
    assert doc["disable_root"] is False
    assert doc["users"] == [{"name": "root", "lock_passwd": True,
                             "ssh_authorized_keys": ["ssh-ed25519 AAAA roost"]}]


def test_meta_data_is_stable_and_network_matches_the_mac() -> None:
    files = files_for(ident())
    meta = yaml.safe_load(files["meta-data"])
    assert meta == {"instance-id": "roost-dev-1", "local-hostname": "dev"}
    net = yaml.safe_load(files["network-config"])
    assert net["version"] == 2
    assert net["ethernets"]["eth0"]["match"] == {"macaddress": "52:55:55:01:02:03"}
    assert net["ethernets"]["eth0"]["dhcp4"] is True


def test_provision_files_follow_limas_order() -> None:
    steps = [Provision(mode="user", script="u"), Provision(mode="system", script="s1"),
             Provision(mode="data", path="/etc/x", content="x", permissions="600"),
             Provision(mode="boot", script="b"), Provision(mode="system", script="s2")]
    names = sorted(n for n in provision_files(steps) if not n.endswith(".meta"))
    assert names == ["provision.d/00-boot", "provision.d/01-data", "provision.d/02-system",
                     "provision.d/03-system", "provision.d/04-user"]
    files = provision_files(steps)
    assert files["provision.d/02-system"] == b"s1" and files["provision.d/03-system"] == b"s2"
    assert b"permissions='600'" in files["provision.d/01-data.meta"]


def _seed(tmp: Path, steps: list[Provision]) -> Path:
    seed = tmp / "cidata"
    me = os.getuid()
    user = "root" if me == 0 else os.environ.get("USER", "nobody")
    for name, data in files_for(ident(user=user, uid=me, provision=steps)).items():
        path = seed / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755 if data.startswith(b"#!") else 0o644)
    return seed


def _provision(seed: Path, run: Path, which: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", str(seed / "roost-provision"), str(seed), which],
                          env={**os.environ, "ROOST_RUN_DIR": str(run)},
                          capture_output=True, text=True, timeout=30)


def test_provision_script_runs_steps_and_writes_the_marker(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    group = os.getgid()
    steps = [
        Provision(mode="system", script=f"echo system >> {out}/order"),
        Provision(mode="boot", script=f"echo boot >> {out}/order"),
        Provision(mode="data", path=f"{out}/sub/data.txt", content="payload\n",
                  owner=f"{os.getuid()}:{group}", permissions="640"),
        Provision(mode="data", path=f"{out}/kept.txt", content="new\n", overwrite=False),
    ]
    (out / "kept.txt").write_text("old\n")
    seed, run = _seed(tmp_path, steps), tmp_path / "run"
    assert _provision(seed, run, "boot").returncode == 0
    assert (out / "order").read_text() == "boot\n" and not (run / "boot-done").exists()
    assert _provision(seed, run, "rest").returncode == 0
    assert (out / "order").read_text() == "boot\nsystem\n"
    assert (out / "sub" / "data.txt").read_text() == "payload\n"
    assert oct((out / "sub" / "data.txt").stat().st_mode & 0o777) == "0o640"
    assert (out / "kept.txt").read_text() == "old\n"  # overwrite: false
    assert (run / "boot-done").read_text() == "i-boot1 0 \n"


def test_provision_script_names_the_first_failing_step(tmp_path: Path) -> None:
    steps = [Provision(mode="system", script="exit 3"),
             Provision(mode="user", script="echo later ran")]
    seed, run = _seed(tmp_path, steps), tmp_path / "run"
    assert _provision(seed, run, "all").returncode == 0
    assert (run / "boot-done").read_text() == "i-boot1 1 00-system\n"
    assert "later ran" in (run / "provision.log").read_text()


PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_ca_certs_reach_cloud_init_and_the_builtin_image() -> None:
    files = files_for(ident(ca_certs=[PEM, PEM.replace("MIIB", "MIIC")]))
    doc = yaml.safe_load(files["user-data"].decode())
    assert doc["ca_certs"] == {"remove_defaults": False,
                               "trusted": [PEM, PEM.replace("MIIB", "MIIC")]}
    assert files["ca-certs.pem"].decode() == PEM + PEM.replace("MIIB", "MIIC")
    bare = files_for(ident())
    assert "ca_certs" not in yaml.safe_load(bare["user-data"].decode())
    assert "ca-certs.pem" not in bare
    only_removed = yaml.safe_load(files_for(ident(ca_remove_defaults=True))["user-data"])
    assert only_removed["ca_certs"] == {"remove_defaults": True, "trusted": []}
