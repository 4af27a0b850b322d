"""Cloud image downloads against a real HTTP server on 127.0.0.1: digests,
resume, the shared download, compression and format detection by content,
candidates falling through, and the cache needing no network once filled."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import itertools
import json
import lzma
import random
import subprocess
import threading
from pathlib import Path

import pycdlib
import pytest
import zstandard

from roost.config.model import Image
from roost.errors import RoostError, UsageError
from roost.image import download as download_mod
from roost.image.cloud import candidates, fetch_file, fetch_image, host_arch
from roost.image.content import ImageFormatError
from roost.image.download import DigestMismatch, DownloadError
from tests.unit.imageserver import serving, sha256


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ROOST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ROOST_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(download_mod, "RETRY_PAUSE_SECONDS", 0.05)
    return tmp_path / "cache"


def cloud_entries(cache: Path) -> list[Path]:
    return sorted((cache / "images").glob("cloud-*"))


@pytest.fixture(scope="module")
def qcow2(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real qcow2 (qemu-img) with 1 MiB of data in it: ~1.2 MiB."""
    path = tmp_path_factory.mktemp("img") / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0xab 0 1M", str(path)], check=True,
                   capture_output=True)
    return path.read_bytes()


@pytest.fixture(scope="module")
def raw() -> bytes:
    """A raw disk: MBR boot code and signature, then data and zeros."""
    rng = random.Random(7)
    body = bytearray(b"\xeb\x63\x90" + rng.randbytes(2 * 1024**2 - 3))
    body[510:512] = b"\x55\xaa"
    return bytes(body) + bytes(1024**2)


def test_download_verified_then_cached_without_network(cache: Path, qcow2: bytes) -> None:
    with serving({"img/disk": qcow2}) as server:
        got = fetch_file(server.url("img/disk"), sha256(qcow2))
        assert got.path.read_bytes() == qcow2 and got.format == "qcow2"
        assert [s.status for s in server.gets("img/disk")] == [200]
        again = fetch_file(server.url("img/disk"), sha256(qcow2))
        assert again == got and len(server.served) == 1  # no request, not even HEAD
        url = server.url("img/disk")
    meta = json.loads((got.path.parent / "meta.json").read_text())
    assert meta["location"] == url and meta["digest"] == sha256(qcow2)
    assert meta["size"] == len(qcow2) and meta["format"] == "qcow2" and meta["fetched"]
    assert got.path.parent.name == "cloud-sha256-" + hashlib.sha256(qcow2).hexdigest()
    assert sorted(p.name for p in got.path.parent.iterdir()) == ["data", "lock", "meta.json"]
    assert fetch_file(url, sha256(qcow2)) == got  # the server is gone: the cache suffices


def test_format_comes_from_the_content_not_the_name(cache: Path, qcow2: bytes,
                                                    raw: bytes) -> None:
    with serving({"looks.qcow2": raw, "looks.raw": qcow2}) as server:
        assert fetch_file(server.url("looks.qcow2")).format == "raw"
        assert fetch_file(server.url("looks.raw")).format == "qcow2"


def test_wrong_digest_is_refused_and_nothing_kept(cache: Path, qcow2: bytes) -> None:
    wrong = "sha256:" + "0" * 64
    with serving({"disk": qcow2}) as server, pytest.raises(DigestMismatch) as e:
        fetch_file(server.url("disk"), wrong)
    assert wrong in str(e.value) and sha256(qcow2) in str(e.value)
    assert cloud_entries(cache) == []


def test_wrong_digest_stops_the_candidates(cache: Path, qcow2: bytes) -> None:
    with serving({"a": qcow2, "b": qcow2}) as server:
        images = [Image(location=server.url("a"), digest="sha512:" + "0" * 128, arch="x86_64"),
                  Image(location=server.url("b"), arch="x86_64")]
        with pytest.raises(DigestMismatch):
            fetch_image(images, arch="x86_64")
        assert server.gets("b") == []


def test_cut_connection_resumes_with_range(cache: Path, raw: bytes) -> None:
    with serving({"disk": raw}) as server:
        server.faults.cut_after, server.faults.cuts = 300_000, 1
        got = fetch_file(server.url("disk"), sha256(raw))
        assert got.path.read_bytes() == raw
        assert [(s.status, s.range) for s in server.gets("disk")] == [
            (200, None), (206, "bytes=300000-")]
        assert server.bytes_sent == len(raw)


def test_resume_in_a_later_run_hashes_the_part_it_has(cache: Path, raw: bytes) -> None:
    url_digest = sha256(raw)
    with serving({"disk": raw}) as server:
        server.faults.cut_after, server.faults.cuts = 500_000, 1
        server.faults.status_after_cuts = 503
        with pytest.raises(RoostError) as e:
            fetch_image([Image(location=server.url("disk"), digest=url_digest)], arch="x86_64")
        assert "503" in str(e.value)
        [entry] = cloud_entries(cache)
        assert (entry / "download.partial").stat().st_size == 500_000
        server.faults.status_after_cuts = None
        got = fetch_file(server.url("disk"), url_digest)
        assert got.path.read_bytes() == raw
        assert server.gets("disk")[-1].range == "bytes=500000-"
        assert server.gets("disk")[-1].status == 206
        assert server.bytes_sent == len(raw)
    assert not (entry / "download.partial").exists()


def test_server_without_range_support_restarts(cache: Path, raw: bytes) -> None:
    with serving({"disk": raw}) as server:
        server.faults.range_support = False
        server.faults.cut_after, server.faults.cuts = 300_000, 1
        got = fetch_file(server.url("disk"), sha256(raw))
        assert got.path.read_bytes() == raw
        assert [s.status for s in server.gets("disk")] == [200, 200]
        assert server.bytes_sent == 300_000 + len(raw)


def test_a_republished_file_is_not_appended_to_the_old_part(cache: Path, raw: bytes) -> None:
    newer = raw[::-1][:len(raw) // 2] + b"\x55\xaa"
    with serving({"disk": raw}) as server:
        server.faults.cut_after, server.faults.cuts = 300_000, 1
        server.faults.status_after_cuts = 503
        with pytest.raises(DownloadError):
            fetch_file(server.url("disk"))
        server.faults.status_after_cuts = None
        server.files["/disk"] = newer  # its ETag changes: If-Range gets the whole file
        got = fetch_file(server.url("disk"))
        assert server.gets("disk")[-1].status == 200
    assert got.path.read_bytes() == newer


@pytest.mark.parametrize("kind,compress", [
    ("gzip", gzip.compress), ("xz", lzma.compress), ("bzip2", bz2.compress),
    ("zstd", lambda data: zstandard.ZstdCompressor().compress(data)),
])
def test_compressed_images_are_unpacked(cache: Path, qcow2: bytes, kind: str,
                                        compress: object) -> None:
    assert callable(compress)
    packed: bytes = compress(qcow2)
    with serving({"image.img": packed}) as server:  # the name says nothing
        got = fetch_file(server.url("image.img"), sha256(packed))  # the published file's digest
    assert got.format == "qcow2" and got.path.read_bytes() == qcow2
    meta = json.loads((got.path.parent / "meta.json").read_text())
    assert meta["compression"] == kind and meta["digest"] == sha256(packed)
    assert not (got.path.parent / "download.partial").exists()


def test_unpacked_raw_keeps_its_zeros_as_holes(cache: Path, raw: bytes) -> None:
    with serving({"disk.xz": lzma.compress(raw, preset=0)}) as server:
        got = fetch_file(server.url("disk.xz"))
    assert got.path.read_bytes() == raw and got.format == "raw"
    assert got.path.stat().st_blocks * 512 < len(raw)  # the trailing MiB of zeros is a hole


def test_corrupt_compressed_image_is_refused(cache: Path, qcow2: bytes) -> None:
    packed = gzip.compress(qcow2)
    with (serving({"disk": packed[: len(packed) // 2]}) as server,
          pytest.raises(ImageFormatError, match="cannot unpack the gzip data")):
        fetch_file(server.url("disk"))
    assert cloud_entries(cache) == []


def make_iso() -> bytes:
    iso = pycdlib.PyCdlib()
    iso.new()
    iso.add_fp(io.BytesIO(b"hello\n"), 6, "/HELLO.;1")
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def test_other_formats_are_refused(cache: Path, tmp_path: Path) -> None:
    backed = tmp_path / "backed.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw",
                    str(backed), "1M"], check=True)
    vmdk = tmp_path / "disk.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(vmdk), "1M"], check=True)
    files = {"a.qcow2": make_iso(), "b.qcow2": backed.read_bytes(), "c.img": vmdk.read_bytes(),
             "d.img": b"<html><body>404 Not Found</body></html>\n"}
    with serving(files) as server:
        for path, what in [("a.qcow2", "ISO 9660"), ("b.qcow2", "backing file"),
                           ("c.img", "VMDK"), ("d.img", "text")]:
            with pytest.raises(ImageFormatError, match=what):
                fetch_file(server.url(path))
    assert cloud_entries(cache) == []


def test_404_falls_through_to_the_next_candidate(cache: Path, qcow2: bytes) -> None:
    with serving({"good": qcow2}) as server:
        images = [Image(location=server.url("missing"), arch="x86_64"),
                  Image(location=server.url("good"), digest=sha256(qcow2), arch="x86_64")]
        got = fetch_image(images, arch="x86_64")
        assert got.location == server.url("good") and got.format == "qcow2"
        assert got.digest == sha256(qcow2) and got.kernel is None
    assert len(cloud_entries(cache)) == 1  # the 404 left nothing behind


def test_all_candidates_failing_lists_each_reason(cache: Path) -> None:
    with serving({}) as server:
        missing = server.url("missing")
    images = [Image(location="http://127.0.0.1:9/refused", arch="x86_64"),
              Image(location=missing, arch="x86_64"),
              Image(location="/nonexistent/disk.qcow2", arch="x86_64"),
              Image(location="http://127.0.0.1:9/other-arch", arch="aarch64")]
    with pytest.raises(RoostError) as e:
        fetch_image(images, arch="x86_64")
    message = str(e.value)
    assert "http://127.0.0.1:9/refused: " in message and "refused" in message.lower()
    assert f"{missing}: " in message and "/nonexistent/disk.qcow2: no such file" in message
    assert "other-arch" not in message


def test_a_stalled_server_times_out(cache: Path, qcow2: bytes,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_mod, "TIMEOUT_SECONDS", 0.3)
    with serving({"disk": qcow2}) as server:
        server.faults.stall_after, server.faults.stall_seconds = 0, 3.0
        with pytest.raises(DownloadError, match="without progress"):
            fetch_file(server.url("disk"))


def test_two_fetchers_share_one_download(cache: Path, raw: bytes) -> None:
    results: list[Path] = []
    with serving({"disk": raw}) as server:
        server.faults.chunk_delay = 0.01  # ~0.5 s: the second surely waits on the first
        threads = [threading.Thread(target=lambda: results.append(
            fetch_file(server.url("disk"), sha256(raw)).path)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(server.gets("disk")) == 1 and server.bytes_sent == len(raw)
    assert len(results) == 2 and results[0] == results[1]
    assert results[0].read_bytes() == raw


def test_kernel_and_initrd_are_fetched_with_their_own_digests(cache: Path,
                                                              qcow2: bytes) -> None:
    kernel, initrd = b"\x7fELF kernel" * 100, gzip.compress(b"070701 initrd")
    with serving({"disk": qcow2, "vmlinuz": kernel, "initrd": initrd}) as server:
        image = Image.model_validate({
            "location": server.url("disk"), "arch": "x86_64",
            "kernel": {"location": server.url("vmlinuz"), "digest": sha256(kernel),
                       "cmdline": "root=/dev/vda1 console=ttyS0"},
            "initrd": {"location": server.url("initrd"), "digest": sha256(initrd)}})
        got = fetch_image([image], arch="x86_64")
        assert got.kernel is not None and got.kernel.read_bytes() == kernel
        assert got.initrd is not None and got.initrd.read_bytes() == initrd  # kept as published
        assert got.kernel_cmdline == "root=/dev/vda1 console=ttyS0"
        bad = image.model_copy(update={"kernel": image.kernel.model_copy(  # type: ignore[union-attr]
            update={"digest": sha256(b"other")})})
        with pytest.raises(DigestMismatch, match="vmlinuz"):
            fetch_image([bad], arch="x86_64")


def test_progress_reports_reach_the_total(cache: Path, raw: bytes) -> None:
    calls: list[tuple[str, int, int | None, float]] = []
    with serving({"disk": raw}) as server:
        fetch_file(server.url("disk"), progress=lambda *a: calls.append(a))
        assert calls[-1][:3] == (server.url("disk"), len(raw), len(raw))
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(calls))


def test_local_image_is_used_in_place_and_verified_once(cache: Path, tmp_path: Path,
                                                        raw: bytes) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(raw)
    steps: list[str] = []
    got = fetch_file(str(disk), sha256(raw), step=steps.append)
    assert got.path == disk and got.format == "raw"
    assert fetch_file(str(disk), sha256(raw), step=steps.append) == got
    assert [s for s in steps if s.startswith("verifying")] == [f"verifying {disk}"]
    disk.write_bytes(raw[::-1])  # changed since: verified again, and refused
    with pytest.raises(DigestMismatch):
        fetch_file(str(disk), sha256(raw))
    assert cloud_entries(cache) == []


def test_local_compressed_image_is_unpacked_into_the_cache(cache: Path, tmp_path: Path,
                                                           qcow2: bytes) -> None:
    packed = tmp_path / "disk.qcow2.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(qcow2))
    got = fetch_file(str(packed))
    assert got.format == "qcow2" and got.path.read_bytes() == qcow2
    assert got.path.parent in cloud_entries(cache) and packed.exists()


def test_candidates_for_an_arch(qcow2: bytes) -> None:
    images = [Image(location="/a", arch="aarch64"), Image(location="/b", arch="x86_64"),
              Image(location="/c", arch="aarch64")]
    assert [i.location for i in candidates(images, "aarch64")] == ["/a", "/c"]
    with pytest.raises(UsageError, match=r"riscv64 .*aarch64, x86_64"):
        candidates(images, "riscv64")
    assert host_arch() in ("x86_64", "aarch64", "armv7l", "riscv64", "ppc64le", "s390x")
