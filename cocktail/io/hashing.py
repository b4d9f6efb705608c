"""sha256 of input files: what provenance records and ``--verify`` checks."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

CHUNK = 8 * 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)  # releases the GIL: hashing runs beside the merge
    return digest.hexdigest()


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (a model's files outside its folder are named by their name)."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return path.name


def file_hashes(root: Path, files: Sequence[Path]) -> dict[str, str]:
    """``{path relative to root: sha256}`` of each file."""
    return {relative(f, root): sha256_file(f) for f in files}
