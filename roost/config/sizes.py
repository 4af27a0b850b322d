"""Human sizes ("512MiB", "4GiB", "20G") to bytes and back."""

from __future__ import annotations

import re

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1024, "kib": 1024,
    "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1024**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1024**4, "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
SIZE_FORM = "a number with a unit, like 512MiB, 4GiB or 20G"


def parse_size(value: str | int) -> int:
    """Bytes in `value`; binary units whatever the spelling (as Lima does)."""
    if isinstance(value, bool):
        raise ValueError(f"expected {SIZE_FORM}, got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"expected a positive size, got {value}")
        return value
    match = _SIZE.match(value)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"invalid size {value!r}: expected {SIZE_FORM}")
    n = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if n <= 0:
        raise ValueError(f"expected a positive size, got {value!r}")
    return int(n)


def format_size(n: int) -> str:
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor and n % (factor // 1024 if factor > 1024 else 1) == 0:
            value = n / factor
            return f"{value:g}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{n}B"
