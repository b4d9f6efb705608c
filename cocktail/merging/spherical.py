"""Merge methods that interpolate on a sphere: slerp, nuslerp, multislerp, karcher.

Each treats a tensor (or, for nuslerp, each row) as a vector, interpolates its direction along the
sphere and its length linearly. Formulas and parameters follow mergekit's (``merge_methods/slerp.py``,
``nuslerp.py``, ``multislerp.py``, ``karcher.py``).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from cocktail.merging.registry import register
from cocktail.merging.tensor_math import cosine

# |cos| above which two tensors count as (anti)parallel and slerp falls back to linear interpolation.
SLERP_PARALLEL = 0.9995


@register("slerp", uses_weights=False, takes_base=False, min_models=2, max_models=2, t=0.5)
def slerp(tensors: Sequence[torch.Tensor], weights=None, base=None, *, t: float) -> torch.Tensor:
    """Spherical interpolation between two models: t=0 gives the first, t=1 the second."""
    first, second = tensors
    cos = cosine(first, second)
    if cos is None or abs(cos) > SLERP_PARALLEL:
        return first * (1 - t) + second * t
    omega = math.acos(cos)
    sin_omega = math.sin(omega)
    return first * (math.sin((1 - t) * omega) / sin_omega) + second * (math.sin(t * omega) / sin_omega)


def nuslerp_vectors(t: float, v0: torch.Tensor, v1: torch.Tensor, row_wise: bool, flatten: bool,
                    eps: float = 1e-8) -> torch.Tensor:
    """Slerp of ``v0`` toward ``v1`` by ``t``, of the whole tensors (``flatten``) or of each row
    (the last dimension; the first with ``row_wise``); (anti)parallel pairs interpolate linearly."""
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    unit0 = v0 / v0.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    unit1 = v1 / v1.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    cos = (unit0 * unit1).sum(dim=-1, keepdim=True).clamp(-1, 1)
    parallel = (1 - cos.square()) <= eps ** 2
    theta = torch.acos(torch.where(parallel, 0.0, cos))
    result = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    result = torch.where(parallel, (1 - t) * v0 + t * v1, result)
    if row_wise and not flatten:
        result = result.transpose(0, -1)
    return result.reshape(shape)


@register("nuslerp", min_models=2, max_models=2, weights_sum_to_one=False, nuslerp_row_wise=False,
          nuslerp_flatten=True)
def nuslerp(tensors: Sequence[torch.Tensor], weights: Sequence[float], base: Optional[torch.Tensor] = None, *,
            nuslerp_row_wise: bool, nuslerp_flatten: bool) -> torch.Tensor:
    """Slerp of two models (or, with a base, of their deltas) at t = w_2 / (w_1 + w_2), whole or row by row."""
    total = weights[0] + weights[1]
    t = 0.5 if abs(total) < 1e-6 else weights[1] / total
    first, second = tensors
    if base is None:
        return nuslerp_vectors(t, first, second, nuslerp_row_wise, nuslerp_flatten)
    return base + nuslerp_vectors(t, first - base, second - base, nuslerp_row_wise, nuslerp_flatten)


@register("multislerp", weights_sum_to_one=False, normalize_weights=True, eps=1e-8)
def multislerp(tensors: Sequence[torch.Tensor], weights: Sequence[float], base: Optional[torch.Tensor] = None, *,
               normalize_weights: bool, eps: float) -> torch.Tensor:
    """Barycentric slerp of any number of models (or deltas from a base): unit vectors mapped to the tangent
    space at their weighted mean, averaged, mapped back; the length is the weighted mean length."""
    if len(tensors) == 1:
        return tensors[0].clone()
    stacked = torch.stack(tensors)
    if base is not None:
        stacked -= base
    flat = stacked.reshape(len(tensors), -1)
    w = torch.tensor(list(weights), dtype=flat.dtype)
    if normalize_weights:
        w = w / w.sum()
    norms = flat.norm(dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = mean.norm()
    if mean_norm < eps:
        if len(tensors) != 2:
            raise ValueError("multislerp: the weighted mean of the directions is zero (opposite models with "
                             "weights that balance out)")
        result = (stacked[0] * w[0] + stacked[1] * w[1])
        return result if base is None else result + base
    mean = mean / mean_norm
    tangents = units - (units * mean).sum(-1, keepdim=True) * mean
    tangent = (tangents * w.view(-1, 1)).sum(0)
    length = tangent.norm() + eps
    result = (mean * torch.cos(length) + tangent * (torch.sin(length) / length)) * (norms.squeeze(-1) * w).sum()
    result = result.view(base.shape if base is not None else tensors[0].shape)
    return result if base is None else result + base


@register("karcher", uses_weights=False, takes_base=False, max_iter=10, tol=1e-5)
def karcher(tensors: Sequence[torch.Tensor], weights=None, base=None, *, max_iter: float, tol: float) -> torch.Tensor:
    """Karcher mean: the point on the sphere closest to the models' directions (Riemannian gradient steps), at
    their mean length (equal weights, as mergekit)."""
    count = len(tensors)
    if count == 1:
        return tensors[0].clone()
    alphas = [1.0 / count] * count
    norms = [t.norm() for t in tensors]
    units = [torch.zeros_like(t) if n.item() == 0 else t / n for t, n in zip(tensors, norms)]
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    share = sum(alphas[i] for i in valid)
    valid_alphas = [alphas[i] / share for i in valid]
    valid_units = [units[i] for i in valid]
    mean = torch.zeros_like(valid_units[0])
    for alpha, unit in zip(valid_alphas, valid_units):
        mean += alpha * unit
    mean_norm = mean.norm()
    mean = valid_units[0].clone() if mean_norm.item() < tol else mean / mean_norm
    for _ in range(int(max_iter)):
        tangent = torch.zeros_like(mean)
        for alpha, unit in zip(valid_alphas, valid_units):
            cos = torch.clamp(torch.dot(mean.flatten(), unit.flatten()), -1.0, 1.0)
            theta = torch.arccos(cos)
            if theta.item() < tol:
                continue
            tangent += alpha * (theta / torch.sin(theta)) * (unit - cos * mean)
        tangent_norm = tangent.norm()
        if tangent_norm.item() < tol:
            break
        mean = torch.cos(tangent_norm) * mean + torch.sin(tangent_norm) * (tangent / tangent_norm)
        unit_norm = mean.norm()
        if unit_norm.item() > tol:
            mean = mean / unit_norm
    return sum(alpha * n for alpha, n in zip(alphas, norms)) * mean
