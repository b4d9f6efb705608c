"""Data-aware merges: pure per-tensor functions that also receive each model's statistics of the tensor.

The statistics come from running each model on its own examples (``cocktail/fewshot/statistics.py``);
here they are plain tensors, like the base tensor, and nothing runs a model. A tensor without
statistics (a bias, a LayerNorm, an embedding, a layer the examples never reached) is merged
linearly, with the same weights.

- **RegMean** (Jin et al. 2023, arXiv 2212.09849). For a linear layer ``y = x Wᵀ`` (``nn.Linear``
  stores W out×in), model i's Gram matrix of the layer's inputs over its examples is
  ``G_i = X_iᵀ X_i`` (in×in). With its off-diagonal entries scaled by α,
  ``G̃_i = α G_i + (1-α) diag(G_i)``, the merged weight is the least-squares fit to every model's
  outputs on its own inputs, each model's share scaled by its weight w_i:

      W*ᵀ = (Σ w_i G̃_i)⁻¹ Σ w_i G̃_i W_iᵀ

  solved in float64. Where ``Σ w_i G̃_i`` is singular (fewer input tokens than input features at
  α = 1, or a feature no example ever set), a small ridge λ·I is added, pulling the directions no
  example saw toward the linear average ``W̄ = Σ w_i W_i`` (``(A + λI) W*ᵀ = B + λ W̄ᵀ``): equal
  statistics still give the linear average exactly and weight 1 on one model still gives that model.
  Each layer that needed the ridge is named in a note.
- **Fisher merging** (Matena & Raffel 2022, arXiv 2111.09832). Per entry,
  ``θ* = Σ w_i (F_i + ε) θ_i / Σ w_i (F_i + ε)``, with F_i model i's diagonal Fisher (the mean over
  its examples of the squared per-example gradient of its own loss) and ε a floor, so entries that no
  model's loss moves (F = 0 everywhere) are averaged linearly, and equal Fishers give the linear average.
  With ``normalize_fisher`` each model's Fisher is first divided by its L2 norm over all its tensors
  (as fusion_bench and MergeLM do by default), so a model whose loss is steeper everywhere (a
  fine-tune on its own training loss, against a base on general examples) does not take over every
  entry: only where each model's Fisher is relatively large counts.

Weights must be non-negative (a negative weight would make ``Σ w_i G_i`` indefinite). The methods are
registered by name in ``methods.py``, like the others.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

DEFAULT_ALPHA = 0.9  # the share of each Gram matrix's off-diagonal entries kept
DEFAULT_FISHER_FLOOR = 1e-12  # ε added to every model's Fisher before the weighted mean
DEFAULT_NORMALIZE_FISHER = False  # True: each model's Fisher divided by its L2 norm over all tensors
FISHER_BLOCK = 1 << 21  # entries of a tensor Fisher-averaged at once (16 MB of float64 each for the work)
RIDGE_START = 1e-8  # the first ridge tried, relative to the mean diagonal of Σ w_i G̃_i
RIDGE_GROWTH = 100.0
RIDGE_TRIES = 6
WELL_POSED = 1e-12  # smallest Cholesky pivot², relative to the largest diagonal entry, solved without a ridge


def reduce_off_diagonal(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """``α G + (1-α) diag(G)``: the off-diagonal entries scaled by α, the diagonal kept (a new tensor)."""
    out = gram * alpha
    out.diagonal().copy_(gram.diagonal())
    return out


def regmean_solve(weights_: Sequence[torch.Tensor], grams: Sequence[torch.Tensor], coefficients: Sequence[float],
                  alpha: float, transposed: bool = True) -> tuple[torch.Tensor, Optional[float]]:
    """``(W*, ridge)``: the RegMean weight of one linear layer, in float64, and the ridge it needed
    (``None`` when ``Σ w_i G̃_i`` was solvable as it is).

    ``weights_`` are the models' weights, out×in when ``transposed`` (``nn.Linear``), in×out otherwise
    (GPT-2's ``Conv1D``); ``grams`` their in×in Gram matrices; ``coefficients`` the model weights
    (non-negative, summing to 1).

    It solves for the correction to the linear average ``W̄ = Σ w_i W_i``: with ``A = Σ w_i G̃_i``,
    ``W*ᵀ = W̄ᵀ + A⁻¹ Σ w_i G̃_i (W_i - W̄)ᵀ``, the same solution as ``A⁻¹ Σ w_i G̃_i W_iᵀ``. As
    ``Σ w_i (W_i - W̄) = 0``, any one model's G̃ may be taken from every term, so the sum is
    ``Σ_{i<n} w_i (G̃_i - G̃_n)(W_i - W̄)ᵀ``: n - 1 products instead of n (one for two models, the
    costliest step), and exact where the answer is known: weight 1 on one model gives its weights, equal
    statistics the linear average, bit for bit."""
    kept = [(w, g, c) for w, g, c in zip(weights_, grams, coefficients) if c != 0]
    layout = [(w.to(torch.float64).T if transposed else w.to(torch.float64)) for w, _, _ in kept]  # in×out
    mean = layout[0] * kept[0][2]  # W̄ᵀ
    for w, (_, _, c) in zip(layout[1:], kept[1:]):
        mean.add_(w, alpha=c)
    last = kept[-1][1].to(torch.float64)
    total = None  # A = Σ w_i G̃_i
    correction = None  # Σ_{i<n} w_i (G̃_i - G̃_n)(W_i - W̄)ᵀ
    for i, (w, (_, gram, c)) in enumerate(zip(layout, kept)):
        g = last if i == len(kept) - 1 else gram.to(torch.float64)
        total = g * c if total is None else total.add_(g, alpha=c)
        if g is not last and not torch.equal(g, last):
            term = reduce_off_diagonal(g - last, alpha) @ (w - mean)
            correction = term.mul_(c) if correction is None else correction.add_(term, alpha=c)
        del g
    total = reduce_off_diagonal(total, alpha)
    if correction is None:  # one model, or every model's statistics equal: the linear average
        merged = mean
        return (merged.T if transposed else merged).contiguous(), None
    solution = _cholesky_solve(total, correction)
    ridge = None
    if solution is None:
        scale = float(total.diagonal().abs().mean()) if total.numel() else 0.0
        for attempt in range(RIDGE_TRIES):
            ridge = (scale if scale > 0 else 1.0) * RIDGE_START * RIDGE_GROWTH ** attempt
            regularised = total.clone()
            regularised.diagonal().add_(ridge)
            solution = _cholesky_solve(regularised, correction, strict=False)
            if solution is not None:
                break
        else:  # pragma: no cover - a ridge of 100 x the mean diagonal always factors
            solution = torch.linalg.lstsq(total, correction).solution
    merged = mean.add_(solution)
    return (merged.T if transposed else merged).contiguous(), ridge


def _cholesky_solve(matrix: torch.Tensor, rhs: torch.Tensor, strict: bool = True) -> Optional[torch.Tensor]:
    """``matrix⁻¹ rhs`` for a symmetric positive semi-definite ``matrix`` by its Cholesky factor, or
    ``None`` when it has none, or (``strict``) when a pivot is so small against the largest diagonal
    entry that the solve would amplify rounding into the result."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) != 0:
        return None
    if strict:
        pivots = factor.diagonal() ** 2
        top = float(matrix.diagonal().max()) if matrix.numel() else 0.0
        if not top > 0 or float(pivots.min()) <= top * WELL_POSED:
            return None
    solution = torch.cholesky_solve(rhs, factor)
    return solution if bool(torch.isfinite(solution).all()) else None


def fisher_mean(tensors: Sequence[torch.Tensor], fishers: Sequence[torch.Tensor], coefficients: Sequence[float],
                epsilon: float) -> torch.Tensor:
    """``Σ w_i (F_i + ε) θ_i / Σ w_i (F_i + ε)`` per entry, computed in float64 and returned in the
    first tensor's dtype. Computed :data:`FISHER_BLOCK` entries at a time, so the float64 work of a
    large tensor (bge-base's embedding table: 23M entries) needs tens of MB, not a GB."""
    out = torch.empty(tensors[0].shape, dtype=tensors[0].dtype)
    flat_out = out.view(-1)
    flat = [(t.reshape(-1), f.reshape(-1), c) for t, f, c in zip(tensors, fishers, coefficients) if c != 0]
    for start in range(0, flat_out.numel(), FISHER_BLOCK):
        stop = min(start + FISHER_BLOCK, flat_out.numel())
        numerator = torch.zeros(stop - start, dtype=torch.float64)
        denominator = torch.zeros_like(numerator)
        for tensor, fisher, c in flat:
            share = (fisher[start:stop].to(torch.float64) + epsilon).mul_(c)
            numerator.addcmul_(share, tensor[start:stop].to(torch.float64))
            denominator.add_(share)
        flat_out[start:stop] = numerator.div_(denominator)
    return out


def normalized_fishers(fishers: Sequence[torch.Tensor], norms: Sequence[float]) -> list[torch.Tensor]:
    """Each model's Fisher of one tensor divided by that model's L2 norm over all its tensors (a model
    whose Fisher is zero everywhere is left as it is: the floor ε then averages it linearly)."""
    return [fisher / norm if norm > 0 else fisher for fisher, norm in zip(fishers, norms)]
