"""Pick the accelerator: KVM only where it really runs a guest, else TCG.

A nested /dev/kvm can exist, create VMs, and still hang every guest. So we
boot a 512-byte boot sector that writes to QEMU's isa-debug-exit port: if
QEMU exits with that status within the bound, KVM works. The answer is
cached per host boot and QEMU binary.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from roost.store.durable import write_atomic
from roost.store.paths import cache_dir

# mov al, 1; out 0xf4, al; hlt; jmp $-1 ... padded, with the boot signature.
_BOOT_SECTOR = bytes.fromhex("b001e6f4f4ebfd").ljust(510, b"\0") + b"\x55\xaa"
_DEBUG_EXIT_STATUS = (1 << 1) | 1
PROBE_SECONDS = 3.0


def _cache_key(qemu: str) -> str:
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = "unknown"
    st = os.stat(qemu)
    return f"{boot_id}:{qemu}:{st.st_mtime_ns}"


def kvm_works(qemu: str, timeout: float = PROBE_SECONDS) -> bool:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    with tempfile.NamedTemporaryFile(suffix=".img") as img:
        img.write(_BOOT_SECTOR)
        img.flush()
        argv = [
            qemu, "-nodefaults", "-no-user-config", "-display", "none", "-machine", "q35",
            "-accel", "kvm", "-m", "16M", "-device", "isa-debug-exit",
            "-drive", f"file={img.name},format=raw,if=ide,readonly=on",
        ]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            return proc.wait(timeout) == _DEBUG_EXIT_STATUS
        except subprocess.TimeoutExpired:
            return False
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def detect_accel(qemu: str) -> str:
    """'kvm' or 'tcg'; ROOST_ACCEL overrides the probe."""
    forced = os.environ.get("ROOST_ACCEL")
    if forced:
        if forced not in ("kvm", "tcg"):
            raise ValueError(f"ROOST_ACCEL must be kvm or tcg, not {forced!r}")
        return forced
    cache = cache_dir() / "accel.json"
    key = _cache_key(qemu)
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return str(cached["accel"])
    except (OSError, ValueError):
        pass
    accel = "kvm" if kvm_works(qemu) else "tcg"
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cache, json.dumps({"key": key, "accel": accel}))
    return accel
