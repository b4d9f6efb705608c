"""Figures written as PNG files: matplotlib loaded only when a plot is asked for (headless), the file
written whole or not at all, and the Pareto front of a cloud of points, for every plot cocktail draws
(``cocktail sweep --plot`` / ``--frontier-plot``, ``cocktail weights --plot``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence, Union

from cocktail.errors import InputError
from cocktail.version import install_hint


def pyplot():
    """``matplotlib.pyplot`` on the headless Agg backend; a clear error when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError(f"drawing a plot needs matplotlib: {install_hint('plot')}") from None
    return plt


def check_target(path: Union[str, os.PathLike]) -> Path:
    """The PNG file to write: its folder must exist (checked before any long computation)."""
    target = Path(path).expanduser()
    if not target.parent.is_dir():
        raise InputError(f"cannot write the plot: folder {target.parent} does not exist")
    return target


def save_png(fig, path: Union[str, os.PathLike]) -> Path:
    """Write ``fig`` to ``path`` as PNG through a temporary file in the same folder, then close it."""
    plt = pyplot()
    try:
        target = check_target(path)
    except InputError:
        plt.close(fig)
        raise
    handle, tmp = tempfile.mkstemp(prefix=".cocktail-plot-", suffix=".png", dir=str(target.parent))
    os.close(handle)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        plt.close(fig)
    return target


def pareto_front(points: Sequence[tuple[float, float]], x_lower: bool = True, y_lower: bool = True
                 ) -> list[tuple[float, float]]:
    """The points no other point beats on both coordinates (``x_lower``: a lower x is better), by x."""
    sx = 1.0 if x_lower else -1.0
    sy = 1.0 if y_lower else -1.0
    front: list[tuple[float, float]] = []
    best_y = None
    for x, y in sorted(set(points), key=lambda p: (sx * p[0], sy * p[1])):
        if best_y is None or sy * y < best_y:
            front.append((x, y))
            best_y = sy * y
    return front
