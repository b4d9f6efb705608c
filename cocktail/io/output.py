"""The output folder: built in a temporary folder beside the target, renamed into place at the end.

On any failure the temporary folder is removed, so an output is written whole or not at all. An
existing output is refused unless ``force``; an output that is, contains, or lies inside an input is
always refused, so no input can be touched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from cocktail.errors import OutputError, option


def check_output(target: str | os.PathLike, inputs: list[Path], force: bool, size: int = 0) -> Path:
    """Refuse outputs that would lose data or cannot fit; returns the absolute target path."""
    target = Path(target).expanduser().absolute()
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
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise OutputError(f"output {target} exists and is not a folder")
        if not force:
            raise OutputError(f"output {target} already exists (use {option('force')} to replace it)")
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


class OutputFolder:
    """``with OutputFolder(target, force) as tmp: ...write into tmp...; commit()`` renames it into place."""

    def __init__(self, target: Path, force: bool = False):
        self.target = Path(target)
        self.force = force
        self.tmp: Path | None = None
        self._made_parents: list[Path] = []
        self.committed = False

    def __enter__(self) -> "OutputFolder":
        parent = self.target.parent
        missing = []
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for folder in reversed(missing):
            folder.mkdir()
            self._made_parents.append(folder)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.cocktail-", dir=self.target.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes it private; the output is an ordinary folder
        return self

    def commit(self) -> Path:
        old = None
        if self.target.exists() or self.target.is_symlink():
            if not self.force:
                raise OutputError(f"output {self.target} already exists (use {option('force')} to replace it)")
            old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-", dir=self.target.parent))
            os.rename(self.target, old / "previous")
        os.rename(self.tmp, self.target)
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
            for folder in reversed(self._made_parents):
                try:
                    folder.rmdir()
                except OSError:
                    pass
