"""The guest RAM file's blocks are taken before boot, except on tmpfs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from roost.driver.base import DriverError
from roost.driver.qemu.ramfile import _is_tmpfs, reserve_ram_file

MEMORY = 64 << 20


def test_blocks_are_allocated_on_a_disk_file_system(tmp_path: Path) -> None:
    if _is_tmpfs(tmp_path):
        pytest.skip(f"{tmp_path} is on tmpfs; the test needs a disk file system")
    ram = tmp_path / "ram.bin"
    ram.write_bytes(b"old")  # a cold boot starts from a fresh file
    reserve_ram_file(ram, MEMORY)
    st = ram.stat()
    assert st.st_size == MEMORY
    assert st.st_blocks * 512 >= MEMORY  # allocated, not sparse
    assert st.st_mode & 0o777 == 0o600
    with open(ram, "rb") as f:
        assert f.read(4096) == b"\0" * 4096


def test_left_sparse_on_tmpfs() -> None:
    shm = Path("/dev/shm")
    if not _is_tmpfs(shm):
        pytest.skip("/dev/shm is not a tmpfs here")
    ram = shm / f"roost-test-ram-{os.getpid()}.bin"
    try:
        reserve_ram_file(ram, MEMORY)
        assert not ram.exists()  # QEMU makes it, sparse
    finally:
        ram.unlink(missing_ok=True)


def test_refused_naming_the_room_when_it_does_not_fit(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    too_much = st.f_bavail * st.f_frsize + (1 << 30)
    with pytest.raises(DriverError) as e:
        reserve_ram_file(tmp_path / "ram.bin", too_much)
    assert "free" in str(e.value) and "lower memory" in str(e.value)
    assert not (tmp_path / "ram.bin").exists()
