"""Merge weights: given by the user (checked and, if asked, normalised)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

from cocktail.errors import InputError, option

SUM_TOLERANCE = 1e-6


def sums_to_one(values: Sequence[float]) -> bool:
    return abs(math.fsum(values) - 1.0) <= SUM_TOLERANCE


def normalized(values: Sequence[float], where: str = "") -> list[float]:
    """``values`` divided by their sum (``where`` says which weights, in the error)."""
    total = math.fsum(values)
    if abs(total) < 1e-12:
        raise InputError(f"cannot normalize weights{where} that sum to zero: {list(values)}")
    return [v / total for v in values]


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
    if normalize:
        values = normalized(values)
    elif not sums_to_one(values):
        raise InputError(f"weights sum to {math.fsum(values):g}, not 1: {values} "
                         f"(pass {option('normalize')} to divide them by their sum)")
    warnings = []
    if any(w < 0 for w in values):
        warnings.append(f"negative weight in {values}: this extrapolates beyond the models")
    return values, warnings
