"""Human sizes ("512MiB", "4GiB", "20G") to bytes and back.

`parse_size` is exact (no floating point: "1.1GiB" is the byte count it
names, or an error if that is not whole), and `format_size` writes a byte
count in the largest unit that divides it, so that what roost.yaml is
written with reads back as the same number: parse(format(n)) == n.
`human_size` rounds, for tables only; never write its output to a config.
"""

from __future__ import annotations

import re

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1024, "kib": 1024,
    "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1024**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1024**4, "tib": 1024**4,
}
# ASCII digits only (\d takes any script's); 30 digits is far beyond any size.
_SIZE = re.compile(r"\s*([0-9]{1,30}(?:\.[0-9]{1,30})?)\s*([a-zA-Z]{0,3})\s*", re.ASCII)
_WRITTEN_UNITS = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))
SIZE_FORM = "a number with a unit, like 512MiB, 4GiB or 20G"
# QEMU keeps sizes in a signed 64-bit integer.
MAX_BYTES = 2**63 - 1


def _quoted(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def parse_size(value: str | int) -> int:
    """Bytes in `value`; binary units whatever the spelling (as Lima does)."""
    from fractions import Fraction  # ~5 ms to import: not for `roost ls`

    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"expected {SIZE_FORM}, got {_quoted(value)}")
    if isinstance(value, int):
        n = Fraction(value)
    else:
        match = _SIZE.fullmatch(value)
        if not match or match.group(2).lower() not in _UNITS:
            raise ValueError(f"invalid size {_quoted(value)}: expected {SIZE_FORM}")
        n = Fraction(match.group(1)) * _UNITS[match.group(2).lower()]
    if n <= 0:
        raise ValueError(f"expected a positive size, got {_quoted(value)}")
    if n.denominator != 1:
        raise ValueError(f"{_quoted(value)} is not a whole number of bytes "
                         f"({float(n):.1f}); give it in a smaller unit")
    if n > MAX_BYTES:
        raise ValueError(f"{_quoted(value)} is too large: at most 8388607TiB")
    return int(n)


def format_size(n: int) -> str:
    """`n` bytes exactly, in the largest unit that divides it ("3000MiB")."""
    for unit, factor in _WRITTEN_UNITS:
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"


def human_size(n: int) -> str:
    """`n` bytes to one decimal, for reading ("2.9GiB"); not exact."""
    for unit, factor in _WRITTEN_UNITS:
        if n >= factor:
            value = n / factor
            return f"{value:g}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{n}B"
