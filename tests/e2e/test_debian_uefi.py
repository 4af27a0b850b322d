"""The same debian-12 image booted by UEFI firmware (OVMF) instead of SeaBIOS."""

from __future__ import annotations

from tests.e2e.conftest import START_TIMEOUT, Roost


def test_uefi_boot_to_running(roost: Roost) -> None:
    name = "deb-uefi"
    roost.run("create", name, "--template", "debian-12", "--set", "firmware.legacyBIOS=false",
              "--memory", "1GiB", "--disk", "4GiB")
    try:
        roost.run("start", name, "--timeout", str(START_TIMEOUT), timeout=START_TIMEOUT + 30)
        row = roost.ls()[name]
        assert row["status"] == "Running", row
        out = roost.run("shell", name, "--", "sh", "-c",
                        "test -d /sys/firmware/efi && echo uefi").stdout
        assert out.strip() == "uefi"
        assert (roost.home / name / "uefi-vars.fd").stat().st_size > 0
    finally:
        roost.run("delete", "--force", name, timeout=180, check=False)
