"""Building blocks of the task-vector methods: sparsify each delta Δ_i = θ_i − θ_b, rescale what is
kept, elect a sign per entry, and mix.

Every method of the family (task_arithmetic, ties, dare_*, breadcrumbs*, della*) is
``θ_b + λ · mix(sparsify(Δ_i))``, as in mergekit's generalized task arithmetic:

- sparsify: keep the top-density magnitudes (TIES), a random density fraction (DARE), the
  magnitudes between the smallest and the top-gamma outliers (breadcrumbs), or entries kept with a
  probability rising with their magnitude rank (DELLA);
- rescale what is kept: by 1/density (the DARE paper: the expected value is Δ), to the delta's L1
  norm (mergekit's ``rescale: true``), or not at all;
- mix: Σ w_i Δ_i, or with sign consensus (TIES) Σ over the entries whose sign agrees with the sign
  of Σ w_i Δ_i; ``normalize`` divides by the sum of the weights that took part.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from cocktail.merging.tensor_math import weighted_sum

RESCALES = ("density", "l1", "none")
ROUNDINGS = ("ceil", "floor")
ZERO_SIGNS = ("base", "positive")
L1_EPS = 1e-7  # mergekit: an L1 norm below this is not rescaled to
SUM_EPS = 1e-8  # mergekit: a weight sum below this is not divided by


def keep_count(numel: int, density: float, rounding: str = "ceil") -> int:
    """How many entries a tensor of ``numel`` keeps at ``density``, at least 1: ⌈density·numel⌉
    (``ceil``), or int(density·numel) as mergekit and PEFT count (``floor``)."""
    if rounding == "floor":
        return max(1, min(numel, int(density * numel)))
    return max(1, min(numel, math.ceil(round(density * numel, 6))))


def trim_to_density(delta: torch.Tensor, density: float, rounding: str = "ceil",
                    rescale: str = "none") -> torch.Tensor:
    """``delta`` with all but its ``keep_count`` largest-magnitude entries set to zero (a new tensor)."""
    k = keep_count(delta.numel(), density, rounding)
    if k >= delta.numel():
        return delta.clone()
    flat = delta.reshape(-1)
    keep = torch.zeros(flat.shape, dtype=torch.bool)
    keep[flat.abs().topk(k, sorted=False).indices] = True
    return rescaled(delta, keep.view_as(delta), rescale, density)


def drop_and_rescale(delta: torch.Tensor, density: float, generator: torch.Generator,
                     rescale: str = "density") -> torch.Tensor:
    """DARE: keep each entry with probability ``density`` (``torch.rand < density``, the draw of
    ``torch.bernoulli``), then rescale what is kept (a new tensor). With ``density`` rescaling its
    expected value is ``delta``."""
    if density >= 1:
        return delta.clone()
    keep = torch.rand(delta.shape, generator=generator, dtype=torch.float32) < density
    return rescaled(delta, keep, rescale, density)


def breadcrumbs(delta: torch.Tensor, density: float, gamma: float, rescale: str = "none") -> torch.Tensor:
    """Model Breadcrumbs: drop the top ``gamma`` fraction of magnitudes (outliers) and the smallest, so that
    int(density·numel) entries remain (fewer outliers are dropped when both cannot hold). A new tensor."""
    if density >= 1:
        return delta.clone()
    numel = delta.numel()
    kept_count = int(density * numel)
    outliers = int(gamma * numel)
    smallest = max(0, numel - kept_count - outliers)
    order = torch.sort(delta.abs().reshape(-1).float(), descending=False).indices
    keep = torch.zeros(numel, dtype=torch.bool)
    keep[order[smallest:smallest + kept_count]] = True
    return rescaled(delta, keep.view_as(delta), rescale, density)


def della_keep_probabilities(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """DELLA's MagPrune: per row (the last dimension), keep probabilities rising linearly with the magnitude
    rank from density − ε (smallest) to density + ε (largest). Shaped like ``delta``."""
    rows = delta.unsqueeze(0) if delta.dim() < 2 else delta
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(torch.float32) + 1
    low, high = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    position = ((ranks - low) / (high - low)).clamp(0, 1)
    return ((density - epsilon) + position * 2 * epsilon).reshape(delta.shape)


def della_prune(delta: torch.Tensor, density: float, epsilon: float, generator: torch.Generator,
                rescale: str = "l1") -> torch.Tensor:
    """DELLA: keep each entry with its MagPrune probability, then rescale (``density``: each kept entry
    divided by its own probability, as in the paper). A new tensor."""
    if density >= 1:
        return delta.clone()
    probabilities = della_keep_probabilities(delta, density, epsilon)
    keep = torch.rand(delta.shape, generator=generator, dtype=torch.float32) < probabilities
    if rescale == "density":
        return torch.where(keep, delta / probabilities.to(delta.dtype), torch.zeros((), dtype=delta.dtype))
    return rescaled(delta, keep, rescale, density)


def rescaled(delta: torch.Tensor, keep: torch.Tensor, rescale: str, density: float) -> torch.Tensor:
    """``delta`` where ``keep``, else 0; then divided by ``density``, scaled back to the L1 norm of ``delta``
    (unless either norm is below 1e-7), or left (``none``)."""
    kept = torch.where(keep, delta, torch.zeros((), dtype=delta.dtype))
    if rescale == "density":
        return kept.div_(density)
    if rescale == "l1":
        before, after = delta.abs().sum(), kept.abs().sum()
        if before >= L1_EPS and after >= L1_EPS:
            kept.mul_(before / after)
    return kept


def elected_signs(deltas: Sequence[torch.Tensor], weights: Sequence[float], zero_sign: str = "base") -> torch.Tensor:
    """TIES' sign election: per entry, the sign of Σ w_i Δ_i; where that sum is exactly 0, no sign
    (``base``: no delta agrees, the entry keeps the base) or + (``positive``, as mergekit and PEFT)."""
    total = weighted_sum(deltas, weights)
    if zero_sign == "positive":
        return torch.where(total >= 0, 1.0, -1.0).to(total.dtype)
    return total.sign_()


def mix(deltas: Sequence[torch.Tensor], weights: Sequence[float], *, consensus: bool, normalize: bool,
        zero_sign: str = "base") -> torch.Tensor:
    """Σ w_i Δ_i over all entries, or (``consensus``) over those nonzero with the elected sign; divided by
    the sum of the weights that took part when ``normalize`` (where that sum is 0, not divided)."""
    if not consensus:
        mixed = weighted_sum(deltas, weights)
        if normalize:
            total = math.fsum(weights)
            if abs(total) >= SUM_EPS:
                mixed.div_(total)
        return mixed
    elected = elected_signs(deltas, weights, zero_sign)
    numerator = torch.zeros_like(deltas[0])
    denominator: Optional[torch.Tensor] = torch.zeros_like(deltas[0]) if normalize else None
    for delta, weight in zip(deltas, weights):
        agree = (delta * elected) > 0  # nonzero and of the elected sign
        numerator.add_(delta * agree, alpha=weight)
        if denominator is not None:
            denominator.add_(agree, alpha=weight)
    if denominator is None:
        return numerator
    return numerator.div_(denominator.masked_fill_(denominator == 0, 1.0))
