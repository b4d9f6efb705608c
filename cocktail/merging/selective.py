"""Merge methods that choose, entry by entry, between a base and one other model (nearswap, arcee_fusion),
and passthrough (one model, scaled). Formulas follow mergekit's (``merge_methods/nearswap.py``,
``arcee_fusion.py``, ``passthrough.py``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from cocktail.merging.registry import REQUIRED, register

QUANTILE_SAMPLE = 1_000_000  # arcee_fusion: quantiles of larger tensors come from this many sampled entries


@register("nearswap", needs_base=True, uses_weights=False, min_models=1, max_models=1, t=REQUIRED)
def nearswap(tensors: Sequence[torch.Tensor], weights, base: torch.Tensor, *, t: float) -> torch.Tensor:
    """NearSwap: take the model's entry where it is within about t of the base's: w = clamp(t / |θ − θ_b|, 0, 1)."""
    other = tensors[0]
    weight = (t / (base - other).abs().clamp(min=1e-6)).clamp(min=0, max=1)
    return weight * other + (1 - weight) * base


def _importance(model: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """|θ − θ_b| times, per row, the KL divergence of softmax(θ) from softmax(θ_b)."""
    p = F.softmax(model, dim=-1) + 1e-8
    q = F.softmax(base, dim=-1) + 1e-8
    return (model - base).abs() * (p * torch.log(p / q)).sum(dim=-1, keepdim=True)


def _quantiles(values: torch.Tensor, generator: torch.Generator) -> tuple[float, float, float]:
    flat = values.reshape(-1)
    if flat.numel() > QUANTILE_SAMPLE:
        flat = flat[torch.randint(flat.numel(), (QUANTILE_SAMPLE,), generator=generator)]
    ordered = flat.sort().values
    at = (torch.tensor([0.25, 0.5, 0.75]) * (ordered.numel() - 1)).long()
    return tuple(ordered[at])


@register("arcee_fusion", needs_base=True, uses_weights=False, min_models=1, max_models=1, random=True)
def arcee_fusion(tensors: Sequence[torch.Tensor], weights, base: torch.Tensor, *,
                 generator: torch.Generator) -> torch.Tensor:
    """Arcee Fusion: take the model's entries whose importance (|Δ| · row KL divergence) is an outlier,
    above median + 1.5 · IQR; keep the base's elsewhere."""
    importance = _importance(tensors[0], base)
    q1, median, q3 = _quantiles(importance, generator)
    take = (importance >= median + 1.5 * (q3 - q1)).to(base.dtype)
    return base + (tensors[0] - base) * take


@register("passthrough", uses_weights=False, takes_base=False, min_models=1, max_models=1, elementwise=True,
          scale=1.0)
def passthrough(tensors: Sequence[torch.Tensor], weights=None, base=None, *, scale: float) -> torch.Tensor:
    """Passthrough: one model's tensors, times scale."""
    return tensors[0] * scale
