"""A fork's suspended.json (roost.ops.fork.forked_state): every path of the
source moved to the fork's directory, however the directory is spelled, a
new SSH port and instance-id; and a path that cannot be moved refuses the
fork rather than leave the fork's QEMU to open the source's disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from roost.errors import RoostError
from roost.ops.fork import forked_state
from roost.store.instance import FORKED_FROM, Instance


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Instance, Instance]:
    real = tmp_path / "real-home"
    real.mkdir()
    (tmp_path / "home").symlink_to(real)  # ROOST_HOME through a symlink
    monkeypatch.setenv("ROOST_HOME", str(tmp_path / "home"))
    # A fork's name may begin with its source's: sdk, sdk-fork.
    return Instance.at("src"), Instance.at("src-fork")


def test_every_path_moves_and_the_identity_is_new(pair: tuple[Instance, Instance]) -> None:
    src, kid = pair
    real_src = str(src.dir.resolve())
    machine_saved = {"name": "src", "ssh_port": 2222, "disk": f"{src.dir}/disk.qcow2",
                     "incoming": f"{real_src}/vmstate.bin", "extra": [],
                     "memory_image": f"{src.dir}/vmstate.ram",
                     "boot": {"kernel": "/cache/k", "uefi_vars": f"{src.dir}/uefi-vars.fd"}}
    saved: dict[str, Any] = {"qemu": machine_saved,
             "sshLocalPort": 2222, "instanceId": "i-old", "dnsPort": 5353,
             "mounts": [{"mountPoint": "/mnt/x"}], "configDigest": "d"}
    state = forked_state(saved, src, kid)
    machine = state["qemu"]
    assert machine["disk"] == f"{kid.dir}/disk.qcow2"
    assert machine["incoming"] == f"{kid.dir}/vmstate.bin"
    assert machine["memory_image"] == f"{kid.dir}/vmstate.ram"
    assert machine["boot"] == {"kernel": "/cache/k", "uefi_vars": f"{kid.dir}/uefi-vars.fd"}
    assert machine["name"] == "src-fork" and machine["ssh_port"] == state["sshLocalPort"] != 2222
    assert state["instanceId"] != "i-old" and state["mounts"] == []
    assert state[FORKED_FROM] == "src" and state["configDigest"] == "d"
    assert saved["qemu"]["disk"] == f"{src.dir}/disk.qcow2"  # the source's is untouched


def test_a_path_it_cannot_move_refuses_the_fork(pair: tuple[Instance, Instance]) -> None:
    src, kid = pair
    saved = {"qemu": {"name": "src", "ssh_port": 1,
                      "extra": [f"-drive file={src.dir}/disk.qcow2"]}}
    with pytest.raises(RoostError, match="not moved with it"):
        forked_state(saved, src, kid)
