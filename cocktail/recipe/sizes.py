"""Sizes in bytes as people write them: ``5GB`` (10^9, as transformers counts) or ``500MiB``.

A leaf (no torch): the shard size of an output and the memory caps of scoring (``--max-memory``) are
both read here.
"""

from __future__ import annotations

import re

from cocktail.errors import InputError, quoted

UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


MAX_SIZE = 2**63 - 1  # the largest file size (off_t)


def parse_size(size, what: str = "shard size") -> int:
    """Bytes in ``5GB`` or ``500MiB``; an integer is a count of bytes. ``what`` names the value in errors.

    A number written without a unit (``"500"``) is refused: 500 bytes is never what was meant."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(size))
        if match and not match.group(2):
            number = match.group(1) if len(match.group(1)) <= 12 else "5"
            raise InputError(f"{what} {quoted(size)} has no unit: write e.g. {number}MB or {number}GB "
                             f"(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
        if not match or match.group(2).upper() not in UNITS:
            raise InputError(f"invalid {what} {quoted(size)} (examples: 5GB, 500MB, 2GiB)")
        value = float(match.group(1)) * UNITS[match.group(2).upper()]  # 400 digits: inf, refused below
    if value > MAX_SIZE:
        raise InputError(f"{what} {quoted(size)} is larger than a file can be (at most 8 EiB)")
    value = int(value)
    if value <= 0:
        raise InputError(f"{what} must be positive, got {quoted(size)}")
    return value


def show_size(count: float) -> str:
    """``count`` bytes for a message: ``12.3 GB``, ``512.0 MB``, ``40.0 kB``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} B"
