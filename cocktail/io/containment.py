"""Paths a model folder names stay inside it, every file read from it is a regular file inside it,
and writes stay inside the output.

A model folder is hostile until checked: its ``modules.json``, its shard index and its file lists
name other files, and a name like ``../..``, ``/etc/ssl`` or a symlink that leaves the folder would
make cocktail read (and copy into the output, or print) files that are not the model's, or write
outside the output. :func:`inside` accepts a name only if it is relative, has no ``..`` and, symlinks
followed, resolves inside the model folder; :func:`read_inside` reads a file only if it resolves inside
its model folder and is a regular file (a FIFO would block the read forever, a device never end it).
A snapshot in the Hugging Face cache keeps its files as symlinks into the repository's ``blobs/``
folder, so there the folder is the whole cached repository.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Optional

from cocktail.errors import InputError, OutputError, quoted


def container(folder: Path) -> Path:
    """The folder files of ``folder`` may resolve into: ``folder`` itself, or for a snapshot in the
    Hugging Face cache (``models--org--name/snapshots/<rev>``, or a folder inside one) the cached
    repository."""
    real = Path(os.path.realpath(folder))
    for snapshot in (real, *real.parents):
        if snapshot.parent.name == "snapshots" and snapshot.parent.parent.name.startswith(("models--", "datasets--")):
            return snapshot.parent.parent
    return real


def within(path: Path, root: Path) -> bool:
    """``path`` (symlinks followed) is ``root`` or lies under it (``root`` already resolved)."""
    real = Path(os.path.realpath(path))
    return real == root or root in real.parents


def inside(folder: Path, name, what: str, named_in) -> Path:
    """``folder / name`` for a ``name`` read from the file ``named_in`` (``what`` it is, for the error),
    refused unless it is a relative path without ``..`` that stays, symlinks followed, in ``folder``."""
    if not isinstance(name, str):
        raise InputError(f"{named_in}: {what} must be a path (a string), got {quoted(name)}")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\", "~")) or ".." in parts or "\x00" in name or (parts and ":" in parts[0]):
        raise InputError(f"{named_in}: {what} {quoted(name)} leaves the model folder "
                         f"(it must be a path inside it, without '..')")
    path = folder / name
    if not within(path, container(folder)):
        raise InputError(f"{named_in}: {what} {quoted(name)} leads outside the model folder (through a symlink)")
    return path


FILE_KINDS = {stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
              stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def _not_regular(path: Path, mode: int) -> InputError:
    return InputError(f"{path}: is {FILE_KINDS.get(stat.S_IFMT(mode), 'not a regular file')}, not a regular file; "
                      f"cocktail reads only regular files")


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading, refused unless it is a regular file: opened without blocking (a
    FIFO with no writer would block an ordinary open forever) and checked on the open file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(path, mode)
    return os.fdopen(fd, "rb")


def read_inside(path: Path, folder: Path, limit: Optional[int] = None) -> bytes:
    """The bytes of ``path`` (at most ``limit``), a file of the model folder ``folder``: refused unless it
    resolves inside the folder (see :func:`container`) and is a regular file."""
    if not within(path, container(folder)):
        raise InputError(f"{path}: leads outside the model folder {folder} (through a symlink)")
    with open_regular(path) as f:
        try:
            return f.read() if limit is None else f.read(limit)
        except OSError as exc:
            raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def check_files(folder: Path, suffixes, root: Optional[Path] = None) -> None:
    """Before another library (transformers) reads the files of ``folder`` that end in one of
    ``suffixes``: refuse unless each, symlinks followed, lies inside the model folder ``root`` (default:
    ``folder``) and is a regular file."""
    bound = container(root or folder)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return
    for name in names:
        path = folder / name
        if path.suffix not in suffixes:
            continue
        if not within(path, bound):
            raise InputError(f"{path}: leads outside the model folder {root or folder} (through a symlink)")
        try:
            mode = os.stat(path).st_mode
        except OSError:  # a link to nothing: nobody reads it
            continue
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            raise _not_regular(path, mode)


def check_write(path: Path, root: Path) -> Path:
    """``path`` if writing it stays inside the output folder ``root`` (no symlink leads out), else an error."""
    parent = Path(os.path.realpath(path.parent))
    real_root = Path(os.path.realpath(root))
    if parent != real_root and real_root not in parent.parents or path.is_symlink():
        raise OutputError(f"refusing to write {path}: it lies outside the output folder {root}")
    return path
