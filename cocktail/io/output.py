"""The output folder: built in a temporary folder beside the target, renamed into place at the end.

On any failure the temporary folder is removed, so an output is written whole or not at all; one
left by a process that was killed (``kill -9``) is removed by the next run into the same output.
An existing output is refused unless ``force``, and even then only an empty folder or a previous
cocktail output (it holds ``cocktail_recipe.yaml``) is replaced. An output that is, holds, or lies
inside an input folder, that holds an input file (examples, recipe), or that is or holds the
current folder is always refused, so no input can be touched.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from cocktail.errors import OutputError, option
from cocktail.io.modes import ordinary_mode
from cocktail.io.provenance import RECIPE_FILE  # what marks a folder as a previous cocktail output

NAME_MAX = 255  # bytes in one file name on common file systems
TEMP_KINDS = ("cocktail", "old")  # .<name>.cocktail-<pid>-* (being built), .<name>.old-<pid>-* (being replaced)


def check_output(target: str | os.PathLike, inputs: list[Path], force: bool, size: int = 0,
                 input_files: tuple = ()) -> Path:
    """Refuse outputs that would lose data or cannot fit; returns the absolute target path.

    ``inputs`` are folders (models, base, config source) and ``input_files`` files (examples, the
    recipe) that the output must leave alone."""
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
    for file in input_files:
        real = Path(os.path.realpath(file))
        if resolved == real or resolved in real.parents:
            raise OutputError(f"output {target} holds the input file {file}")
    here = Path(os.path.realpath(os.getcwd()))
    if resolved == here or resolved in here.parents:
        raise OutputError(f"output {target} is {'' if resolved == here else 'above '}the current folder")
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise OutputError(f"output {target} exists and is not a folder")
        if not force:
            raise OutputError(f"output {target} already exists (use {option('force')} to replace it)")
        if not target.is_symlink() and any(target.iterdir()) and not (target / RECIPE_FILE).is_file():
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


def temp_stem(target: Path) -> str:
    """The start of the temporary names beside ``target``: ``.<name>`` (a digest of a long name, so the
    temporary name fits in a file name too)."""
    name = target.name
    if len(os.fsencode(name)) > 150:
        name = hashlib.sha256(os.fsencode(name)).hexdigest()[:32]
    return f".{name}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale(target: Path) -> list[Path]:
    """Remove the temporary folders beside ``target`` left by dead processes; returns what went."""
    stem = re.escape(temp_stem(target))
    pattern = re.compile(rf"^{stem}\.(?:{'|'.join(TEMP_KINDS)})-(\d+)-[A-Za-z0-9_]+$")
    removed = []
    try:
        names = os.listdir(target.parent)
    except OSError:
        return removed
    for name in names:
        match = pattern.match(name)
        path = target.parent / name
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            if path.is_dir() and not path.is_symlink():
                _rmtree(path)
                removed.append(path)
    return removed


def _rmtree(path: Path) -> None:
    """Remove ``path`` whole, read-only folders inside it included."""
    for folder, _, _ in os.walk(path):
        mode = os.lstat(folder).st_mode
        if not stat.S_ISLNK(mode) and mode & 0o700 != 0o700:
            os.chmod(folder, mode | 0o700)
    shutil.rmtree(path, ignore_errors=True)


def _writing(target: Path, exc: OSError) -> OutputError:
    """An OS error met while writing the output, as one line."""
    why = {errno.ENOSPC: "the disk is full", errno.EFBIG: "a file grew past the size limit (ulimit -f)",
           errno.EDQUOT: "the disk quota is exceeded", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied", errno.EROFS: "the file system is read-only",
           errno.ENAMETOOLONG: "a name is too long"}.get(exc.errno, exc.strerror or str(exc))
    return OutputError(f"cannot write the output {target}: {why}; nothing was written")


class OutputFolder:
    """``with OutputFolder(target, force) as tmp: ...write into tmp...; commit()`` renames it into place.

    An ``OSError`` while writing (a full disk, a file size limit, no permission) becomes an
    :class:`OutputError`, with nothing left behind."""

    def __init__(self, target: Path, force: bool = False):
        self.target = Path(target)
        self.force = force
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
            remove_stale(self.target)
            self.tmp = Path(tempfile.mkdtemp(prefix=f"{temp_stem(self.target)}.cocktail-{os.getpid()}-",
                                             dir=self.target.parent))
            os.chmod(self.tmp, ordinary_mode(folder=True))  # mkdtemp makes it private; the output is an ordinary folder
        except BaseException as exc:  # Ctrl-C or SIGTERM included: no __exit__ runs for a failed __enter__
            self._clean()
            if isinstance(exc, OSError):
                raise _writing(self.target, exc) from None
            raise
        return self

    def commit(self) -> Path:
        old = None
        if self.target.exists() or self.target.is_symlink():
            if not self.force:
                raise OutputError(f"output {self.target} already exists (use {option('force')} to replace it)")
            # beside the target (a rename inside one folder works even when the old output is read-only)
            old = self.target.parent / f"{temp_stem(self.target)}.old-{os.getpid()}-{os.urandom(4).hex()}"
            try:
                os.rename(self.target, old)
            except OSError as exc:
                raise OutputError(f"cannot replace the output {self.target}: {exc.strerror or exc}; "
                                  f"nothing was changed") from None
        try:
            os.rename(self.tmp, self.target)
        except OSError as exc:
            if old is not None:
                os.rename(old, self.target)  # put the previous output back
            raise _writing(self.target, exc) from None
        self.committed = True
        if old is not None:
            _rmtree(old)
        return self.target

    def _clean(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
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
