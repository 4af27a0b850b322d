"""Cloud images in use: an instance disk over a fetched image and its pin,
`roost image list/pull/rm/prune`, and how a download shows."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from roost.cli.download_bar import DownloadBar, plain_line
from roost.cli.main import cli
from roost.config.model import Config
from roost.errors import RoostError, UsageError
from roost.image.cloud import fetch_file, host_arch
from roost.image.cloudcache import EntryBusy
from roost.image.disk import prepare_disk, read_pinned
from roost.image.prune import held_for_pinning, prune, remove_images, users
from roost.store.instance import Instance
from tests.unit.imageserver import serving, sha256

MIB = 1024**2


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ROOST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ROOST_HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.fixture(scope="module")
def qcow2(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real qcow2 whose virtual size (3 GiB) is above the smallest disk."""
    path = tmp_path_factory.mktemp("img") / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "3G"], check=True)
    return path.read_bytes()


def make_instance(home: Path, name: str) -> Instance:
    inst = Instance.at(name, home)
    inst.dir.mkdir(parents=True)
    inst.config.write_text("cpus: 1\n")
    return inst


def cloud_config(url: str, digest: str | None, **kernel: str) -> Config:
    image: dict[str, object] = {"location": url, "digest": digest, "arch": host_arch()}
    if kernel:
        image["kernel"] = kernel
    return Config.model_validate({"images": [image], "disk": "2GiB"})


def qemu_info(path: Path) -> dict[str, object]:
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)], check=True,
                         capture_output=True, text=True).stdout
    info: dict[str, object] = json.loads(out)
    return info


def test_instance_disk_over_a_cloud_image_and_its_pin(env: Path, qcow2: bytes) -> None:
    kernel = b"\x7fELF" + bytes(4096)
    inst = make_instance(env / "home", "web")
    with serving({"disk.img": qcow2, "vmlinuz": kernel}) as server:
        config = cloud_config(server.url("disk.img"), sha256(qcow2),
                              location=server.url("vmlinuz"), cmdline="root=/dev/vda1")
        steps: list[str] = []
        pinned = prepare_disk(inst, config, steps.append)
    assert pinned.kind == "cloud" and pinned.kernel_cmdline == "root=/dev/vda1"
    assert pinned.disk.read_bytes() == qcow2 and pinned.kernel is not None
    info = qemu_info(inst.disk)
    assert info["backing-filename"] == str(pinned.disk)
    assert info["backing-filename-format"] == "qcow2"
    assert info["virtual-size"] == 3 * 1024**3  # not the 2 GiB asked: the image is larger
    saved = json.loads(inst.path("image.json").read_text())
    assert saved["kind"] == "cloud" and saved["kernelCmdline"] == "root=/dev/vda1"
    assert read_pinned(inst) == pinned
    assert users(pinned.disk.parent) == [inst.dir] and users(pinned.kernel.parent) == [inst.dir]
    assert any(s.startswith("downloading") for s in steps)
    assert prepare_disk(inst, config) == pinned  # made once: no network needed again


def test_raw_cloud_image_is_the_backing_format(env: Path) -> None:
    raw = b"\xeb\x63\x90" + bytes(507) + b"\x55\xaa" + bytes(MIB)
    inst = make_instance(env / "home", "raw")
    with serving({"disk.qcow2": raw}) as server:  # the name lies
        prepare_disk(inst, cloud_config(server.url("disk.qcow2"), None))
    assert qemu_info(inst.disk)["backing-filename-format"] == "raw"


def test_pins_written_before_kernel_cmdline_still_load(env: Path, tmp_path: Path) -> None:
    inst = make_instance(env / "home", "old")
    base = tmp_path / "base.qcow2"
    base.write_bytes(b"QFI\xfb")
    inst.path("image.json").write_text(json.dumps(
        {"kind": "file", "disk": str(base), "kernel": None, "initrd": None}))
    pinned = read_pinned(inst)
    assert pinned.kind == "file" and pinned.disk == base and pinned.kernel_cmdline is None


def test_prune_and_rm_respect_pins(env: Path, qcow2: bytes) -> None:
    other = qcow2 + b"\0" * 512
    inst = make_instance(env / "home", "web")
    with serving({"a": qcow2, "b": other, "c": qcow2 * 2}) as server:
        pinned = prepare_disk(inst, cloud_config(server.url("a"), sha256(qcow2)))
        unused = fetch_file(server.url("b"), sha256(other))
        server.faults.cut_after, server.faults.cuts = 1000, 1
        server.faults.status_after_cuts = 503
        with pytest.raises(RoostError):
            fetch_file(server.url("c"))  # an unfinished download stays for a resume
    partial = [d for d in (env / "cache" / "images").glob("cloud-*")
               if not (d / "meta.json").exists()]
    assert len(partial) == 1

    assert {p.directory for p in prune(dry_run=True)} == {unused.path.parent, partial[0]}
    assert unused.path.exists()
    with pytest.raises(UsageError, match=str(inst.dir)):
        remove_images(sha256(qcow2))
    with held_for_pinning([unused.path]):  # an instance is being made from it right now
        assert {p.directory for p in prune()} == {partial[0]}
        with pytest.raises(EntryBusy):
            remove_images(server.url("b"))
    assert [p.directory for p in prune()] == [unused.path.parent]
    assert pinned.disk.exists() and prune() == []
    removed = remove_images(sha256(qcow2).removeprefix("sha256:"), force=True)
    assert [p.directory for p in removed] == [pinned.disk.parent] and not pinned.disk.exists()
    with pytest.raises(UsageError, match="no cached cloud image"):
        remove_images(sha256(qcow2))


def test_image_cli(env: Path, qcow2: bytes) -> None:
    runner = CliRunner()
    with serving({"disk.img": qcow2}) as server:
        url = server.url("disk.img")
        result = runner.invoke(cli, ["image", "pull", url, "--digest", sha256(qcow2)])
        assert result.exit_code == 0, result.output
        path = Path(result.stdout.strip())
        assert path.read_bytes() == qcow2
        assert f"downloaded {url}" in result.stderr
        inst = make_instance(env / "home", "web")
        prepare_disk(inst, cloud_config(url, sha256(qcow2)))

    listed = json.loads(runner.invoke(cli, ["image", "list", "--json"]).stdout)
    assert listed == [{
        "kind": "cloud", "location": url, "digest": sha256(qcow2), "format": "qcow2",
        "size": len(qcow2), "path": str(path), "state": "complete",
        "fetched": listed[0]["fetched"], "instances": [str(inst.dir)]}]
    table = runner.invoke(cli, ["image", "list"]).stdout
    assert url in table and "qcow2" in table and " web" in table

    refused = runner.invoke(cli, ["image", "rm", url])
    assert refused.exit_code == 2 and "in use by" in refused.stderr and path.exists()
    assert "no unused images" in runner.invoke(cli, ["image", "prune"]).stdout
    forced = runner.invoke(cli, ["image", "rm", url, "--force"])
    assert forced.exit_code == 0 and not path.exists()

    bad = runner.invoke(cli, ["image", "pull", "relative/disk.img"])
    assert bad.exit_code == 2 and "absolute path" in bad.stderr
    bad = runner.invoke(cli, ["image", "pull", url, "--digest", "md5:abc"])
    assert bad.exit_code == 2 and "--digest" in bad.stderr


def test_plain_progress_lines() -> None:
    assert plain_line("http://h/x.img", int(45.2 * MIB), 120 * MIB, 30.1 * MIB) == (
        "downloading http://h/x.img: 45.2/120.0 MiB, 30.1 MiB/s, ETA 2s")
    assert plain_line("http://h/x.img", 5 * MIB, None, MIB) == (
        "downloading http://h/x.img: 5.0 MiB, 1.0 MiB/s")
    out = io.StringIO()
    bar = DownloadBar(out, tty=False)
    for i in range(1, 100):  # in well under 2 s: the first line, then only the last
        bar("http://h/x.img", i * MIB, 100 * MIB, 50.0 * MIB)
    bar("http://h/x.img", 100 * MIB, 100 * MIB, 50.0 * MIB)
    assert out.getvalue().splitlines() == [
        "downloading http://h/x.img: 1.0/100.0 MiB, 50.0 MiB/s, ETA 1s",
        "downloaded http://h/x.img: 100.0 MiB, 50.0 MiB/s"]


def test_terminal_bar_hands_the_screen_back() -> None:
    out, events = io.StringIO(), []
    bar = DownloadBar(out, tty=True, pause=lambda: events.append("pause"),
                      resume=lambda: events.append("resume"))
    bar("http://h/x.img", MIB, 4 * MIB, MIB)
    bar("http://h/x.img", 4 * MIB, 4 * MIB, MIB)
    assert events == ["pause", "resume"] and "x.img" in out.getvalue()
