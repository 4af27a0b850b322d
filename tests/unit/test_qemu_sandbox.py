"""Whether QEMU runs in its seccomp sandbox: the real QEMU takes the option;
one built without seccomp is a clear error unless the host opts out."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from roost.driver.base import DriverError
from roost.driver.qemu.sandbox import OPT_OUT_ENV, sandbox_supported, use_sandbox

QEMU = shutil.which("qemu-system-x86_64")


def no_seccomp_qemu(tmp: Path) -> str:
    """A stand-in for a QEMU built without libseccomp: its own message."""
    qemu = tmp / "qemu-system-x86_64"
    qemu.write_text("#!/bin/sh\n"
                    "echo 'qemu-system-x86_64: -sandbox is not supported by this QEMU binary' >&2\n"
                    "exit 1\n")
    qemu.chmod(0o755)
    return str(qemu)


@pytest.mark.skipif(QEMU is None, reason="needs qemu-system-x86_64")
async def test_this_qemu_takes_the_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    assert QEMU is not None
    monkeypatch.delenv(OPT_OUT_ENV, raising=False)
    assert await sandbox_supported(QEMU) is None
    assert await use_sandbox(QEMU, "dev") is True


async def test_qemu_without_seccomp_is_an_error_naming_the_way_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OPT_OUT_ENV, raising=False)
    qemu = no_seccomp_qemu(tmp_path)
    with pytest.raises(DriverError) as e:
        await use_sandbox(qemu, "dev")
    assert "not supported by this QEMU binary" in str(e.value)
    assert f"{OPT_OUT_ENV}=off" in str(e.value)


async def test_opting_out_is_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(OPT_OUT_ENV, "off")
    with caplog.at_level(logging.WARNING):
        assert await use_sandbox(no_seccomp_qemu(tmp_path), "dev") is False
    assert "QEMU of dev runs without its seccomp sandbox" in caplog.text


async def test_a_bad_opt_out_value_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OPT_OUT_ENV, "no")
    with pytest.raises(DriverError, match=f"{OPT_OUT_ENV} must be on or off, not 'no'"):
        await use_sandbox("/nonexistent/qemu", "dev")
