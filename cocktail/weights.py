"""Merge weights: given by the user (checked and, if asked, normalised)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

from .errors import InputError

SUM_TOLERANCE = 1e-6


def fixed_weights(weights: Optional[Sequence[float]], count: int, normalize: bool = False) -> tuple[list[float], list[str]]:
    """Check user-given weights: ``(weights, warnings)``. ``None`` means equal weights."""
    if weights is None or len(weights) == 0:
        return [1.0 / count] * count, []
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise InputError(f"weights must be numbers, got {list(weights)!r}") from None
    if len(values) != count:
        raise InputError(f"got {len(values)} weight{'s' * (len(values) != 1)} for {count} model{'s' * (count != 1)}: give one weight per model")
    if not all(math.isfinite(w) for w in values):
        raise InputError(f"weights must be finite numbers, got {values}")
    total = math.fsum(values)
    if normalize:
        if abs(total) < 1e-12:
            raise InputError(f"cannot normalize weights that sum to zero: {values}")
        values = [w / total for w in values]
    elif abs(total - 1.0) > SUM_TOLERANCE:
        raise InputError(f"weights sum to {total:g}, not 1: {values} (pass --normalize to divide them by their sum)")
    warnings = []
    if any(w < 0 for w in values):
        warnings.append(f"negative weight in {values}: this extrapolates beyond the models")
    return values, warnings
