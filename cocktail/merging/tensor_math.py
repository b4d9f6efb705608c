"""Arithmetic the merge methods share: weighted sums, exact dot products, cosines."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

DOT_CHUNK = 1 << 20  # dot products: float32 BLAS on chunks of this many entries, summed exactly in float64


def weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float],
                 out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Σ w_i t_i, into ``out`` when given (a scratch tensor reused from tensor to tensor saves fresh pages)."""
    out = torch.mul(tensors[0], weights[0], out=out)
    for tensor, weight in zip(tensors[1:], weights[1:]):
        out.add_(tensor, alpha=weight)
    return out


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """Dot product of two tensors as flat vectors: fast float32 chunks, added up exactly."""
    a, b = a.reshape(-1), b.reshape(-1)
    return math.fsum(torch.dot(a[i:i + DOT_CHUNK], b[i:i + DOT_CHUNK]).item() for i in range(0, a.numel(), DOT_CHUNK))


def norm(a: torch.Tensor) -> float:
    return math.sqrt(dot(a, a))


def cosine(a: torch.Tensor, b: torch.Tensor, norm_a: Optional[float] = None, norm_b: Optional[float] = None
           ) -> Optional[float]:
    """Cosine of two tensors as flat vectors (``None`` if either is zero)."""
    norm_a = norm(a) if norm_a is None else norm_a
    norm_b = norm(b) if norm_b is None else norm_b
    if norm_a == 0 or norm_b == 0:
        return None
    return max(-1.0, min(1.0, dot(a, b) / (norm_a * norm_b)))
