"""The output folder: built in a temporary folder beside the target, renamed into place at the end.

On any failure the temporary folder is removed, so an output is written whole or not at all; one
left by a process that was killed (``kill -9``) is cleaned up by the next run into the same output,
which puts back a previous output the killed run had moved aside (see :mod:`cocktail.io.temp_folders`).
An existing output is refused unless ``force``, and even then only an empty folder or a previous
cocktail output (it holds ``cocktail_recipe.yaml``) is replaced. An output that is, holds, or lies
inside an input folder, that holds an input file (examples, recipe), or that is or holds the
current folder is always refused, so no input can be touched. An output path that is a symlink is
refused (whatever it points to), and the clean-up never follows a link.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from cocktail.errors import OutputError, option
from cocktail.io.provenance import RECIPE_FILE  # what marks a folder as a previous cocktail output
from cocktail.io.temp_folders import BUILT, aside_name, recover, remove_work, rmtree, work_prefix, write_marker

NAME_MAX = 255  # bytes in one file name on common file systems


def check_output(target: str | os.PathLike, inputs: list[Path], force: bool, size: int = 0,
                 read: Sequence = ()) -> Path:
    """Refuse outputs that would lose data or cannot fit; returns the absolute target path.

    ``inputs`` are the model folders opened (models, adapters, bases, config source): the output may
    not be, hold or lie inside one. ``read`` is every other path the run reads, as the recipe names
    it (``Recipe.read_paths``, and the recipe file): the output may not be or hold one."""
    target = Path(target).expanduser().absolute()
    if len(os.fsencode(target.name)) > NAME_MAX:
        raise OutputError(f"output name {target.name[:40]}... is {len(os.fsencode(target.name))} bytes long; "
                          f"file systems allow {NAME_MAX}")
    resolved = Path(os.path.realpath(target))
    for source in inputs:
        source = Path(os.path.realpath(source))
        if source.is_file():
            source = source.parent
        if resolved == source:
            raise OutputError(f"output {target} is one of the input models")
        if resolved in source.parents:
            raise OutputError(f"output {target} contains the input model {source}")
        if source in resolved.parents:
            raise OutputError(f"output {target} lies inside the input model {source}")
    for path in read:
        if not os.path.lexists(path):  # a hub id, or a name the run found missing
            continue
        real = Path(os.path.realpath(path))
        if resolved == real or resolved in real.parents:
            raise OutputError(f"output {target} {'is' if resolved == real else 'holds'} the input "
                              f"{'folder' if real.is_dir() else 'file'} {os.fsdecode(path)}")
    here = Path(os.path.realpath(os.getcwd()))
    if resolved == here or resolved in here.parents:
        raise OutputError(f"output {target} is {'' if resolved == here else 'above '}the current folder")
    recover(target)  # a run killed while replacing this output gets its previous output back first
    if target.is_symlink():
        raise OutputError(f"output {target} is a symlink (to {os.readlink(target)}): give the folder itself; "
                          f"cocktail neither writes through nor replaces a link")
    if target.exists():
        if not target.is_dir():
            raise OutputError(f"output {target} exists and is not a folder")
        if not force:
            raise OutputError(f"output {target} already exists (use {option('force')} to replace it)")
        if any(target.iterdir()) and not (target / RECIPE_FILE).is_file():
            raise OutputError(f"output {target} is not empty and is not a cocktail output (no {RECIPE_FILE}): "
                              f"{option('force')} only replaces a previous merge; choose another output")
    existing = target.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"output {target} cannot be made: {existing} is a file, not a folder")
    free = shutil.disk_usage(existing).free
    if size > free:
        raise OutputError(f"not enough disk space for {target}: the merge needs {size / 1e9:.2f} GB, "
                          f"{free / 1e9:.2f} GB are free")
    return target


def _writing(target: Path, exc: OSError) -> OutputError:
    """An OS error met while writing the output, as one line."""
    why = {errno.ENOSPC: "the disk is full", errno.EFBIG: "a file grew past the size limit (ulimit -f)",
           errno.EDQUOT: "the disk quota is exceeded", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied", errno.EROFS: "the file system is read-only",
           errno.ENAMETOOLONG: "a name is too long"}.get(exc.errno, exc.strerror or str(exc))
    return OutputError(f"cannot write the output {target}: {why}; nothing was written")


class OutputFolder:
    """``with OutputFolder(target, force) as folder: ...write into folder.tmp...; folder.commit()`` puts
    it in place.

    ``folder.tmp`` lies in a work folder beside the target that a marker names as this process's (see
    :mod:`cocktail.io.temp_folders`). ``commit`` moves an existing output aside (its new name written
    into the marker first), renames the new one into place, and only then removes the old one: a run
    killed at any point leaves either the old output or the new one in place, or a work folder from
    which the next run puts the old one back. An ``OSError`` while writing (a full disk, a file size
    limit, no permission) becomes an :class:`OutputError`, with nothing left behind."""

    def __init__(self, target: Path, force: bool = False):
        self.target = Path(target)
        self.force = force
        self.work: Path | None = None
        self.tmp: Path | None = None
        self._made_parents: list[Path] = []
        self.committed = False

    def __enter__(self) -> "OutputFolder":
        try:
            parent = self.target.parent
            missing = []
            while not parent.exists():
                missing.append(parent)
                parent = parent.parent
            for folder in reversed(missing):
                folder.mkdir()
                self._made_parents.append(folder)
            recover(self.target)
            self.work = Path(tempfile.mkdtemp(prefix=work_prefix(self.target), dir=self.target.parent))
            write_marker(self.work)
            self.tmp = self.work / BUILT
            self.tmp.mkdir()  # the user's ordinary folder mode (mkdtemp's is private)
        except BaseException as exc:  # Ctrl-C or SIGTERM included: no __exit__ runs for a failed __enter__
            self._clean()
            if isinstance(exc, OSError):
                raise _writing(self.target, exc) from None
            raise
        return self

    def commit(self) -> Path:
        aside = self._move_aside() if os.path.lexists(self.target) else None
        self._put_in_place(aside)
        self.committed = True
        if aside is not None:
            rmtree(aside)
        if aside is None or not os.path.lexists(aside):  # else the marker stays: the next run finishes the job
            remove_work(self.work)
        return self.target

    def _move_aside(self) -> Path:
        """Rename the existing output to a fresh name beside it (a rename inside one folder works even
        when the old output is read-only), once the marker names it."""
        if not self.force:
            raise OutputError(f"output {self.target} already exists (use {option('force')} to replace it)")
        aside = self.target.parent / aside_name(self.target)
        write_marker(self.work, aside.name)  # first: the next run puts it back if this one dies
        try:
            os.rename(self.target, aside)
        except OSError as exc:
            raise OutputError(f"cannot replace the output {self.target}: {exc.strerror or exc}; "
                              f"nothing was changed") from None
        return aside

    def _put_in_place(self, aside: Path | None) -> None:
        try:
            os.rename(self.tmp, self.target)
        except OSError as exc:
            if aside is not None:
                os.rename(aside, self.target)  # put the previous output back
            raise _writing(self.target, exc) from None

    def _clean(self) -> None:
        if self.work is not None:
            remove_work(self.work)
        for folder in reversed(self._made_parents):
            try:
                folder.rmdir()
            except OSError:
                pass

    def __exit__(self, exc_type, exc, tb):
        if not self.committed:
            self._clean()
        if isinstance(exc, OSError):
            raise _writing(self.target, exc) from None
        return None
