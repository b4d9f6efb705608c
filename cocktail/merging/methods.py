"""Merge methods: small pure functions over one tensor of each model, registered by name (``registry.py``).

This module holds the weighted average and the task-vector family (``task_vectors.py``: task
arithmetic, TIES, DARE, Model Breadcrumbs, DELLA, SCE, RAM) and Model Stock; it imports the other
families (``spherical.py``: slerp, nuslerp, multislerp, karcher; ``selective.py``: nearswap,
arcee_fusion, passthrough) so that importing it registers every method.

Notation: θ_b the base tensor, θ_i the models' tensors, Δ_i = θ_i − θ_b, w_i the weights.
Parameter names and meanings follow mergekit's (``mergekit/merge_methods/``), so a mergekit config's
parameters mean the same here; where cocktail's default differs from mergekit's, the parameter that
sets it is documented (README, "Merge methods").
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from cocktail.errors import InputError
from cocktail.merging import selective, spherical  # noqa: F401  (registers their methods)
from cocktail.merging.data_aware import (
    DEFAULT_ALPHA,
    DEFAULT_FISHER_FLOOR,
    DEFAULT_NORMALIZE_FISHER,
    fisher_mean,
    normalized_fishers,
    regmean_solve,
)
from cocktail.merging.registry import (  # noqa: F401  (the registry's names, as this module always offered them)
    METHODS,
    REQUIRED,
    Method,
    each,
    get_method,
    parameter_problem,
    register,
)
from cocktail.merging.task_vectors import (  # noqa: F401
    RESCALES,
    ROUNDINGS,
    ZERO_SIGNS,
    breadcrumbs,
    della_prune,
    drop_and_rescale,
    keep_count,
    mix,
    trim_to_density,
)
from cocktail.merging.tensor_math import cosine, dot, weighted_sum

CONVENTIONS = {"rescale": RESCALES, "rounding": ROUNDINGS, "zero_sign": ZERO_SIGNS}


def _task_vector_method(name: str, *, consensus: bool, random: bool = False, normalize: bool, rescale: str,
                        zero_sign: str, extra: Sequence[str] = (), check=None, **defaults):
    """Register a method of the family θ_b + λ · mix(sparsify(Δ_i)) (see ``task_vectors.py``)."""
    defaults = {"lambda": 1.0, "normalize": normalize, **defaults}
    if rescale:
        defaults["rescale"] = rescale
    if consensus:
        defaults["zero_sign"] = zero_sign
    return register(name, needs_base=True, random=random, nonnegative_weights=consensus, weights_sum_to_one=False,
                    choices={k: v for k, v in CONVENTIONS.items() if k in defaults},
                    per_model=tuple(k for k in ("density", *extra) if k in defaults), check=check, **defaults)


def _merged(base: torch.Tensor, deltas: list, weights: Sequence[float], params: dict, consensus: bool) -> torch.Tensor:
    mixed = mix(deltas, weights, consensus=consensus, normalize=params["normalize"],
                zero_sign=params.get("zero_sign", "base"))
    return base + params["lambda"] * mixed


@register("linear", elementwise=True, takes_base=False, takes_out=True)
def linear(tensors: Sequence[torch.Tensor], weights: Sequence[float], base=None, *,
           out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Weighted average: sum of w_i * theta_i (LM-Cocktail)."""
    return weighted_sum(tensors, weights, out)


@_task_vector_method("task_arithmetic", consensus=False, normalize=False, rescale="", zero_sign="")
def task_arithmetic(tensors: Sequence[torch.Tensor], weights: Sequence[float], base: torch.Tensor,
                    **params) -> torch.Tensor:
    """Task arithmetic: theta_b + lambda * sum of w_i * delta_i (Ilharco et al. 2022)."""
    return _merged(base, [t - base for t in tensors], weights, params, consensus=False)


@_task_vector_method("ties", consensus=True, normalize=True, rescale="none", zero_sign="base", density=0.5,
                     rounding="ceil")
def ties(tensors: Sequence[torch.Tensor], weights: Sequence[float], base: torch.Tensor, *, density, rounding: str,
         rescale: str, **params) -> torch.Tensor:
    """TIES: trim each delta to its top-density entries, elect signs, average the agreeing ones (Yadav et al. 2023)."""
    deltas = [trim_to_density(t - base, d, rounding, rescale) for t, d in zip(tensors, each(density, len(tensors)))]
    return _merged(base, deltas, weights, params, consensus=True)


def _dare(tensors, base, density, generator, rescale) -> list:
    return [drop_and_rescale(t - base, d, generator, rescale) for t, d in zip(tensors, each(density, len(tensors)))]


@_task_vector_method("dare_linear", consensus=False, random=True, normalize=False, rescale="density", zero_sign="",
                     density=0.5)
def dare_linear(tensors: Sequence[torch.Tensor], weights: Sequence[float], base: torch.Tensor, *,
                density, generator: torch.Generator, rescale: str, **params) -> torch.Tensor:
    """DARE + task arithmetic: randomly drop delta entries, rescale the rest, add (Yu et al. 2023)."""
    return _merged(base, _dare(tensors, base, density, generator, rescale), weights, params, consensus=False)


@_task_vector_method("dare_ties", consensus=True, random=True, normalize=True, rescale="density", zero_sign="base",
                     density=0.5)
def dare_ties(tensors: Sequence[torch.Tensor], weights: Sequence[float], base: torch.Tensor, *,
              density, generator: torch.Generator, rescale: str, **params) -> torch.Tensor:
    """DARE + TIES: randomly drop delta entries, rescale the rest, then elect signs and average (Yu et al. 2023)."""
    return _merged(base, _dare(tensors, base, density, generator, rescale), weights, params, consensus=True)


def _breadcrumbs(tensors, base, density, gamma, rescale) -> list:
    count = len(tensors)
    return [breadcrumbs(t - base, d, g, rescale) for t, d, g in zip(tensors, each(density, count), each(gamma, count))]


@_task_vector_method("breadcrumbs", consensus=False, normalize=False, rescale="none", zero_sign="",
                     extra=("gamma",), density=1.0, gamma=0.01)
def breadcrumbs_linear(tensors: Sequence[torch.Tensor], weights: Sequence[float], base: torch.Tensor, *,
                       density, gamma, rescale: str, **params) -> torch.Tensor:
    """Model Breadcrumbs: drop each delta's largest (gamma) and smallest entries, add (Davari & Belilovsky 2023)."""
    return _merged(base, _breadcrumbs(tensors, base, density, gamma, rescale), weights, params, consensus=False)


@_task_vector_method("breadcrumbs_ties", consensus=True, normalize=False, rescale="none", zero_sign="positive",
                     extra=("gamma",), density=1.0, gamma=0.01)
def breadcrumbs_ties(tensors: Sequence[torch.Tensor], weights: Sequence[float], base: torch.Tensor, *,
                     density, gamma, rescale: str, **params) -> torch.Tensor:
    """Model Breadcrumbs with TIES sign election (Davari & Belilovsky 2023; Yadav et al. 2023)."""
    return _merged(base, _breadcrumbs(tensors, base, density, gamma, rescale), weights, params, consensus=True)


def della_problem(params: dict, count: int) -> Optional[str]:
    """Why DELLA cannot draw with these densities and epsilons (``None`` if it can)."""
    for density, epsilon in zip(each(params["density"], count), each(params["epsilon"], count)):
        if density < 1 and not (0 < density - epsilon and density + epsilon < 1):
            return f"density ± epsilon must lie in (0, 1), got density {density:g} and epsilon {epsilon:g}"
    return None


def _della(tensors, base, density, epsilon, generator, rescale) -> list:
    count = len(tensors)
    return [della_prune(t - base, d, e, generator, rescale)
            for t, d, e in zip(tensors, each(density, count), each(epsilon, count))]


@_task_vector_method("della", consensus=True, random=True, normalize=True, rescale="l1", zero_sign="positive",
                     extra=("epsilon",), check=della_problem, density=1.0, epsilon=0.15)
def della(tensors: Sequence[torch.Tensor], weights: Sequence[float], base: torch.Tensor, *,
          density, epsilon, generator: torch.Generator, rescale: str, **params) -> torch.Tensor:
    """DELLA: drop delta entries with a probability falling with their magnitude, elect signs, average (Deep et al. 2024)."""
    return _merged(base, _della(tensors, base, density, epsilon, generator, rescale), weights, params, consensus=True)


@_task_vector_method("della_linear", consensus=False, random=True, normalize=False, rescale="l1", zero_sign="",
                     extra=("epsilon",), check=della_problem, density=1.0, epsilon=0.15)
def della_linear(tensors: Sequence[torch.Tensor], weights: Sequence[float], base: torch.Tensor, *,
                 density, epsilon, generator: torch.Generator, rescale: str, **params) -> torch.Tensor:
    """DELLA's magnitude-ranked dropping, then task arithmetic (Deep et al. 2024)."""
    return _merged(base, _della(tensors, base, density, epsilon, generator, rescale), weights, params, consensus=False)


@register("sce", needs_base=True, uses_weights=False, select_topk=1.0)
def sce(tensors: Sequence[torch.Tensor], weights, base: torch.Tensor, *, select_topk: float) -> torch.Tensor:
    """SCE: keep the entries where the models vary most, weigh each model by its delta's mean square, elect signs (Wan et al. 2024)."""
    deltas = torch.stack([t - base for t in tensors])
    if select_topk < 1:
        variance = deltas.var(dim=0, unbiased=False)
        k = int(torch.count_nonzero(variance).item() * select_topk)
        keep = torch.zeros(variance.numel(), dtype=deltas.dtype)
        if k:
            keep[variance.abs().reshape(-1).topk(k).indices] = 1
        deltas = deltas * keep.view_as(variance)
    elected = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)
    agree = (deltas.sign() == elected).to(deltas.dtype)
    energy = deltas.square().reshape(len(tensors), -1).mean(dim=1)
    total = energy.sum().item()
    energy = torch.full_like(energy, 1 / len(tensors)) if abs(total) < 1e-6 else energy / total
    weights_per_entry = energy.view(-1, *[1] * base.dim()) * agree
    merged = (deltas * weights_per_entry).sum(dim=0) / weights_per_entry.sum(dim=0).clamp(min=1e-6)
    return base + merged


def _ram_parts(tensors, base, epsilon):
    deltas = torch.stack([t - base for t in tensors]).reshape(len(tensors), -1)
    nonzero = deltas.abs() > epsilon
    counts = nonzero.sum(dim=0, keepdim=True)
    return deltas * nonzero, nonzero, counts, counts > 1, counts == 1


@register("ram", needs_base=True, uses_weights=False, epsilon=1e-5)
def ram(tensors: Sequence[torch.Tensor], weights, base: torch.Tensor, *, epsilon: float) -> torch.Tensor:
    """RAM: a delta entry only one model changes is added whole; one several change is averaged over them."""
    deltas, _, counts, shared, unique = _ram_parts(tensors, base, epsilon)
    merged = (deltas * unique + deltas * shared / counts.clamp(min=1)).sum(dim=0)
    return base + merged.reshape(base.shape)


@register("ramplus_tl", needs_base=True, uses_weights=False, r=0.1, alpha=0.2, epsilon=1e-5)
def ramplus_tl(tensors: Sequence[torch.Tensor], weights, base: torch.Tensor, *, r: float, alpha: float,
               epsilon: float) -> torch.Tensor:
    """RAM+ (tensor-local): RAM with each model's unique entries scaled up by its share of shared ones."""
    deltas, nonzero, counts, shared, unique = _ram_parts(tensors, base, epsilon)
    ratio = (nonzero & shared).sum(dim=1) / (nonzero & unique).sum(dim=1).clamp(min=epsilon)
    scale = 1 + r * ratio.clamp(min=0, max=alpha)
    merged = (deltas * unique * scale.unsqueeze(-1) + deltas * shared / counts.clamp(min=1)).sum(dim=0)
    return base + merged.reshape(base.shape)


@register("model_stock", needs_base=True, uses_weights=False, min_models=2, clamp=True, filter_wise=False)
def model_stock(tensors: Sequence[torch.Tensor], weights=None, base: torch.Tensor = None, *, clamp: bool = True,
                filter_wise: bool = False) -> torch.Tensor:
    """Model Stock: move from the base toward the models' mean by a ratio set by their deltas' angle (Jang et al. 2024)."""
    count = len(tensors)
    if filter_wise:
        return _model_stock_rows(tensors, base, clamp)
    deltas = [t - base for t in tensors]
    norms = [math.sqrt(dot(d, d)) for d in deltas]
    cosines = [cosine(deltas[i], deltas[j], norms[i], norms[j]) for i in range(count) for j in range(i + 1, count)]
    del deltas
    cos = sum(c if c is not None else 0.0 for c in cosines) / len(cosines)
    if clamp:
        cos = max(0.0, cos)  # deltas pointing apart: stay at the base
    denominator = 1 + (count - 1) * cos
    ratio = 0.0 if abs(denominator) < 1e-6 else count * cos / denominator  # no finite estimate: the base
    mean = weighted_sum(tensors, [1.0 / count] * count)
    return mean * ratio + base * (1 - ratio)


def _model_stock_rows(tensors: Sequence[torch.Tensor], base: torch.Tensor, clamp: bool) -> torch.Tensor:
    """Model Stock with one ratio per row (the last dimension), as mergekit's ``filter_wise``."""
    count = len(tensors)
    rows = base.unsqueeze(0) if base.dim() == 1 else base
    deltas = [(t.unsqueeze(0) if t.dim() == 1 else t) - rows for t in tensors]
    cosines = []
    for i in range(count):
        for j in range(i + 1, count):
            norms = (deltas[i].norm(dim=-1) * deltas[j].norm(dim=-1)).clamp(min=1e-6)
            cosines.append(((deltas[i] * deltas[j]).sum(dim=-1) / norms).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    if clamp:
        cos = cos.clamp(min=0)
    denominator = 1 + (count - 1) * cos
    singular = denominator.abs() < 1e-6
    ratio = torch.where(singular, 0.0, count * cos / torch.where(singular, 1.0, denominator))
    mean = weighted_sum(tensors, [1.0 / count] * count)
    return (ratio * (mean.unsqueeze(0) if mean.dim() == 1 else mean) + (1 - ratio) * rows).reshape(base.shape)


# --- data-aware methods: called with each model's statistics of the tensor (None: it has none) ----------

@register("regmean", nonnegative_weights=True, statistics="gram", alpha=DEFAULT_ALPHA)
def regmean(tensors: Sequence[torch.Tensor], weights: Sequence[float], base=None, *, alpha: float,
            statistics: Optional[Sequence[torch.Tensor]] = None, transposed: bool = True,
            ridged: Optional[list] = None, name: str = "") -> torch.Tensor:
    """RegMean: each linear layer fitted to every model's outputs on its own examples' inputs (Jin et al. 2023)."""
    if statistics is None:
        return weighted_sum(tensors, weights)
    merged, ridge = regmean_solve(tensors, statistics, weights, alpha, transposed)
    if ridge is not None and ridged is not None:
        ridged.append(name)
    return merged.to(tensors[0].dtype)


@register("fisher", nonnegative_weights=True, statistics="fisher", epsilon=DEFAULT_FISHER_FLOOR,
          normalize_fisher=DEFAULT_NORMALIZE_FISHER)
def fisher(tensors: Sequence[torch.Tensor], weights: Sequence[float], base=None, *, epsilon: float,
           normalize_fisher: bool, statistics: Optional[Sequence[torch.Tensor]] = None,
           norms: Optional[Callable[[], Sequence[float]]] = None, **_) -> torch.Tensor:
    """Fisher merging: each entry averaged with weights w_i times model i's diagonal Fisher (Matena & Raffel 2022)."""
    if statistics is None:
        return weighted_sum(tensors, weights)
    if normalize_fisher:
        if norms is None:
            raise InputError("normalize_fisher needs each model's whole Fisher, not one tensor's")
        statistics = normalized_fishers(statistics, norms())
    return fisher_mean(tensors, statistics, weights, epsilon)
