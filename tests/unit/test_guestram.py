"""The guest RAM saved from a memfd into a sparse image and loaded back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from roost.driver.qemu import guestram
from roost.store.instance import Instance

MiB = 1 << 20
SIZE = 64 * MiB


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def memfd_with(pages: dict[int, bytes]) -> int:
    fd = guestram.create(SIZE)
    for offset, data in pages.items():
        os.pwrite(fd, data, offset)
    return fd


def read_all(fd: int) -> bytes:
    return os.pread(fd, SIZE, 0)


def test_round_trip_keeps_every_byte_and_only_pages_in_use(tmp_path: Path) -> None:
    pages = {0: b"\x01" * 4096, 5 * MiB + 4096: os.urandom(3 * 4096),
             SIZE - 4096: b"end".ljust(4096, b"\0"),
             # allocated but all zeros (memory the guest used and cleared): not saved
             20 * MiB: bytes(2 * MiB)}
    fd = memfd_with(pages)
    image = tmp_path / "vmstate.ram"
    try:
        written = guestram.save(fd, SIZE, image)
        expected = read_all(fd)
    finally:
        os.close(fd)
    assert written == 5 * 4096
    assert image.stat().st_size == SIZE
    assert allocated(image) <= 64 * 1024  # the file system's blocks round a little
    fresh = guestram.create(SIZE)
    try:
        assert guestram.load(image, fresh, SIZE) == 5 * 4096
        assert read_all(fresh) == expected
        # Only the saved pages are allocated in the new memfd.
        assert [(a, b) for a, b in guestram.extents(fresh, SIZE)] == [
            (0, 4096), (5 * MiB + 4096, 5 * MiB + 4 * 4096), (SIZE - 4096, SIZE)]
    finally:
        os.close(fresh)


def test_an_empty_guest_saves_an_empty_image(tmp_path: Path) -> None:
    fd = guestram.create(SIZE)
    try:
        assert guestram.save(fd, SIZE, tmp_path / "r") == 0
    finally:
        os.close(fd)
    fresh = guestram.create(SIZE)
    try:
        assert guestram.load(tmp_path / "r", fresh, SIZE) == 0
        assert list(guestram.extents(fresh, SIZE)) == []
    finally:
        os.close(fresh)


def test_a_save_replaces_the_image_and_leaves_a_hard_link_as_it_was(tmp_path: Path) -> None:
    # A fork holds a hard link to its source's image; the source's next
    # suspend must not write through it.
    image, fork = tmp_path / "vmstate.ram", tmp_path / "fork.ram"
    for value, target in ((b"A", image), (b"B", image)):
        fd = memfd_with({0: value * 4096})
        try:
            guestram.save(fd, SIZE, target)
        finally:
            os.close(fd)
        if value == b"A":
            os.link(image, fork)
    assert fork.read_bytes()[:1] == b"A"
    assert image.read_bytes()[:1] == b"B"
    assert not list(tmp_path.glob(".*tmp"))


def test_an_image_of_another_size_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "r"
    image.write_bytes(b"x" * 4096)
    fd = guestram.create(SIZE)
    try:
        with pytest.raises(ValueError, match="4096 bytes of guest RAM, the machine has"):
            guestram.load(image, fd, SIZE)
    finally:
        os.close(fd)


def test_the_instance_drops_the_image_with_the_state(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOST_HOME", str(tmp_path))
    inst = Instance.at("a")
    assert inst.memory_image == guestram.image_for(inst.vmstate)
    inst.dir.mkdir(parents=True)
    for f in (inst.suspended, inst.vmstate, inst.memory_image):
        f.write_text("x")
    inst.drop_saved_state()
    assert not any(f.exists() for f in (inst.suspended, inst.vmstate, inst.memory_image))


def test_found_in_a_process_that_holds_it() -> None:
    fd = guestram.create(SIZE)
    try:
        os.pwrite(fd, b"mine", 0)
        found = guestram.find_in(os.getpid())
        assert found is not None
        try:
            assert os.pread(found, 4, 0) == b"mine"
        finally:
            os.close(found)
    finally:
        os.close(fd)
    assert guestram.find_in(os.getpid()) is None
