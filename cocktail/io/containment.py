"""Paths a model folder names stay inside it, and writes stay inside the output.

A model folder is hostile until checked: its ``modules.json``, its shard index and its file lists
name other files, and a name like ``../..``, ``/etc/ssl`` or a symlink that leaves the folder would
make cocktail read (and copy into the output) files that are not the model's, or write outside the
output. :func:`inside` accepts a name only if it is relative, has no ``..`` and, symlinks followed,
resolves inside the model folder. A snapshot in the Hugging Face cache keeps its files as symlinks
into the repository's ``blobs/`` folder, so there the folder is the whole cached repository.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from cocktail.errors import InputError, OutputError


def container(folder: Path) -> Path:
    """The folder files of ``folder`` may resolve into: ``folder`` itself, or for a snapshot in the
    Hugging Face cache (``models--org--name/snapshots/<rev>``) the cached repository."""
    real = Path(os.path.realpath(folder))
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith(("models--", "datasets--")):
        return real.parent.parent
    return real


def within(path: Path, root: Path) -> bool:
    """``path`` (symlinks followed) is ``root`` or lies under it (``root`` already resolved)."""
    real = Path(os.path.realpath(path))
    return real == root or root in real.parents


def inside(folder: Path, name, what: str, named_in) -> Path:
    """``folder / name`` for a ``name`` read from the file ``named_in`` (``what`` it is, for the error),
    refused unless it is a relative path without ``..`` that stays, symlinks followed, in ``folder``."""
    if not isinstance(name, str):
        raise InputError(f"{named_in}: {what} must be a path (a string), got {name!r}")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\", "~")) or ".." in parts or "\x00" in name or (parts and ":" in parts[0]):
        raise InputError(f"{named_in}: {what} {name!r} leaves the model folder "
                         f"(it must be a path inside it, without '..')")
    path = folder / name
    if not within(path, container(folder)):
        raise InputError(f"{named_in}: {what} {name!r} leads outside the model folder (through a symlink)")
    return path


def check_write(path: Path, root: Path) -> Path:
    """``path`` if writing it stays inside the output folder ``root`` (no symlink leads out), else an error."""
    parent = Path(os.path.realpath(path.parent))
    real_root = Path(os.path.realpath(root))
    if parent != real_root and real_root not in parent.parents or path.is_symlink():
        raise OutputError(f"refusing to write {path}: it lies outside the output folder {root}")
    return path
