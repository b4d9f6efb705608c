"""Merge weights: given by the user (checked and, if asked, normalised)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

from cocktail.errors import InputError, few_names, option

SUM_TOLERANCE = 1e-6


def weight_sum(values: Sequence[float], where: str = "") -> float:
    """The exact sum of ``values``; weights too large to add up (``1e308 1e308``) are an error."""
    try:
        total = math.fsum(values)
    except OverflowError:
        total = math.inf
    if not math.isfinite(total):
        raise InputError(f"weights{where} are too large to add up: {list(values)}")
    return total


def sums_to_one(values: Sequence[float]) -> bool:
    return abs(weight_sum(values) - 1.0) <= SUM_TOLERANCE


def normalized(values: Sequence[float], where: str = "") -> list[float]:
    """``values`` divided by their sum (``where`` says which weights, in the error)."""
    total = weight_sum(values, where)
    if total == 0:
        raise InputError(f"cannot normalize weights{where} that sum to zero: {list(values)}")
    result = [v / total for v in values]
    if not all(math.isfinite(v) for v in result):
        raise InputError(f"cannot normalize weights{where}: their sum {total:g} is too close to zero to divide by "
                         f"({list(values)})")
    return result


def fixed_weights(weights: Optional[Sequence[float]], count: int, normalize: bool = False,
                  sum_to_one: bool = True) -> tuple[list[float], list[str]]:
    """Check user-given weights: ``(weights, warnings)``. ``None`` means equal weights. ``sum_to_one=False``:
    any sum goes (the method's weights scale task vectors, or only their ratio counts)."""
    if weights is None or len(weights) == 0:
        return [1.0 / count] * count, []
    try:
        values = [float(w) for w in weights]
    except OverflowError:
        raise InputError(f"weights must be finite numbers, got one too large for a float: "
                         f"{few_names([str(w)[:20] + ('...' if len(str(w)) > 20 else '') for w in weights])}") from None
    except (TypeError, ValueError):
        raise InputError(f"weights must be numbers, got {list(weights)!r}") from None
    if len(values) != count:
        raise InputError(f"got {len(values)} weight{'s' * (len(values) != 1)} for {count} model{'s' * (count != 1)}: give one weight per model")
    if not all(math.isfinite(w) for w in values):
        raise InputError(f"weights must be finite numbers, got {values}")
    if normalize:
        values = normalized(values)
    elif sum_to_one and not sums_to_one(values):
        raise InputError(f"weights sum to {weight_sum(values):g}, not 1: {values} "
                         f"(pass {option('normalize')} to divide them by their sum)")
    warnings = []
    if any(w < 0 for w in values):
        warnings.append(f"negative weight in {values}: this extrapolates beyond the models")
    return values, warnings
