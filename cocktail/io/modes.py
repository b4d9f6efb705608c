"""The permissions of what cocktail writes: an ordinary file or folder, as ``open()`` or ``mkdir`` would
make it under the user's umask (``tempfile``, which cocktail writes through, makes them private)."""

from __future__ import annotations

import os


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ordinary_mode(folder: bool = False) -> int:
    """The mode ``open()`` (``0o666``) or ``mkdir`` (``0o777``) gives under the umask: 0644 / 0755 for 022."""
    return (0o777 if folder else 0o666) & ~current_umask()
