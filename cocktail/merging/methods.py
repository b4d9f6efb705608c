"""Merge methods: small pure functions over one tensor of each model, registered by name.

A method receives the float32 tensors of one parameter (one per model, same shape; float64 where an
input is float64), the weights, the base model's tensor when the method needs one, and its
parameters; it returns the merged tensor in that dtype and never modifies its inputs. The engine (``engine.py``) handles reading, dtypes and writing,
and resolves per-tensor weights and parameters (``tensor_settings.py``) before calling a method.

Notation: θ_b the base tensor, θ_i the models' tensors, Δ_i = θ_i − θ_b, w_i the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from cocktail.errors import InputError, did_you_mean, option
from cocktail.merging.data_aware import DEFAULT_ALPHA, DEFAULT_FISHER_FLOOR, fisher_mean, regmean_solve

# |cos| above which two tensors count as (anti)parallel and slerp falls back to linear interpolation.
SLERP_PARALLEL = 0.9995
DOT_CHUNK = 1 << 20  # dot products: float32 BLAS on chunks of this many entries, summed exactly in float64


@dataclass(frozen=True)
class Method:
    """A registered merge method and what it needs from a recipe."""

    name: str
    fn: Callable[..., torch.Tensor]
    needs_base: bool = False
    uses_weights: bool = True
    defaults: dict = field(default_factory=dict)
    summary: str = ""
    takes_base: bool = True  # False: a base model is refused (linear, slerp: they would ignore it)
    min_models: int = 1
    max_models: Optional[int] = None
    random: bool = False  # True: called with ``generator=`` (a torch.Generator seeded per tensor)
    nonnegative_weights: bool = False
    elementwise: bool = False  # True: memory-bound elementwise arithmetic, run on one thread
    takes_out: bool = False  # True: called with ``out=`` (a scratch tensor of the result's shape) when one is given
    statistics: Optional[str] = None  # "gram" or "fisher": data-aware, called with ``statistics=`` (see data_aware.py)

    @property
    def parameters(self) -> tuple[str, ...]:
        """The names of the parameters this method takes."""
        return tuple(self.defaults)

    def __call__(self, tensors: Sequence[torch.Tensor], weights: Sequence[float],
                 base: Optional[torch.Tensor] = None, **params) -> torch.Tensor:
        return self.fn(tensors, weights, base, **{**self.defaults, **params})

    def check_inputs(self, model_count: int, has_base: bool) -> None:
        """Refuse a model count or base model this method cannot work with."""
        if self.needs_base and not has_base:
            raise InputError(f"merge method {self.name} needs a base model ({option('base')}): "
                             f"it merges the models' differences from the base")
        if has_base and not self.takes_base:
            users = ", ".join(sorted(m.name for m in METHODS.values() if m.needs_base))
            raise InputError(f"merge method {self.name} takes no base model (it would ignore it); the methods "
                             f"that merge differences from a base are {users}")
        if self.min_models == self.max_models and model_count != self.min_models:
            raise InputError(f"merge method {self.name} merges exactly {self.min_models} models, got {model_count}")
        if model_count < self.min_models:
            raise InputError(f"merge method {self.name} needs at least {self.min_models} models"
                             f"{' besides the base' if self.needs_base else ''}, got {model_count}")
        if self.max_models is not None and model_count > self.max_models:
            raise InputError(f"merge method {self.name} merges at most {self.max_models} models, got {model_count}")


METHODS: dict[str, Method] = {}


def register(name: str, *, needs_base: bool = False, uses_weights: bool = True, takes_base: bool = True,
             min_models: int = 1, max_models: Optional[int] = None, random: bool = False,
             nonnegative_weights: bool = False, elementwise: bool = False, takes_out: bool = False,
             statistics: Optional[str] = None, **defaults):
    """Register ``fn(tensors, weights, base, **params) -> tensor`` as merge method ``name``.

    ``defaults`` names every parameter the method takes, with its default value.
    """

    def decorate(fn):
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        METHODS[name] = Method(name, fn, needs_base, uses_weights, dict(defaults), summary, takes_base,
                               min_models, max_models, random, nonnegative_weights, elementwise, takes_out,
                               statistics)
        return fn

    return decorate


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise InputError(f"unknown merge method {name!r}; {did_you_mean(name, METHODS)}"
                         f"(choose from {', '.join(sorted(METHODS))})") from None


def parameter_problem(name: str, value: float) -> Optional[str]:
    """Why ``value`` is not allowed for parameter ``name`` (``None`` if it is)."""
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if name == "density" and not 0 < value <= 1:
        return f"must be in (0, 1] (the fraction of each difference kept), got {value:g}"
    if name == "alpha" and not 0 <= value <= 1:
        return f"must be in [0, 1] (the share of the Gram matrices' off-diagonal entries kept), got {value:g}"
    if name == "epsilon" and value <= 0:
        return f"must be more than 0 (the floor added to every Fisher entry), got {value:g}"
    if name == "t" and not 0 <= value <= 1:
        return f"must be in [0, 1] (0 gives the first model, 1 the second), got {value:g}"
    return None


# --- building blocks -------------------------------------------------------------------------------

def keep_count(numel: int, density: float) -> int:
    """How many entries a tensor of ``numel`` keeps at ``density``: ⌈density·numel⌉, at least 1."""
    return max(1, min(numel, math.ceil(round(density * numel, 6))))


def trim_to_density(delta: torch.Tensor, density: float) -> torch.Tensor:
    """``delta`` with all but its ⌈density·numel⌉ largest-magnitude entries set to zero (a new tensor)."""
    k = keep_count(delta.numel(), density)
    if k >= delta.numel():
        return delta.clone()
    flat = delta.reshape(-1)
    kept = flat.abs().topk(k, sorted=False).indices
    out = torch.zeros_like(flat)
    out[kept] = flat[kept]
    return out.view_as(delta)


def drop_and_rescale(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE: drop each entry with probability 1 − density, divide the kept ones by density (a new tensor).

    Its expected value is ``delta``.
    """
    if density >= 1:
        return delta.clone()
    keep = torch.rand(delta.shape, generator=generator, dtype=torch.float32) < density
    return torch.where(keep, delta / density, torch.zeros((), dtype=delta.dtype))


def sign_consensus_mean(deltas: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """TIES' elect-and-merge: per entry, the sign of Σ w_i Δ_i wins, and the entries that agree with it
    (nonzero, same sign) are averaged, weighted by w_i. Entries where none agree are zero."""
    elected = _weighted_sum(deltas, weights).sign_()
    numerator = torch.zeros_like(deltas[0])
    denominator = torch.zeros_like(deltas[0])
    for delta, weight in zip(deltas, weights):
        agree = (delta * elected) > 0  # nonzero and of the elected sign
        numerator.add_(delta * agree, alpha=weight)
        denominator.add_(agree, alpha=weight)
    return numerator.div_(denominator.masked_fill_(denominator == 0, 1.0))


def _weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float],
                  out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Σ w_i t_i, into ``out`` when given (a scratch tensor reused from tensor to tensor saves fresh pages)."""
    out = torch.mul(tensors[0], weights[0], out=out)
    for tensor, weight in zip(tensors[1:], weights[1:]):
        out.add_(tensor, alpha=weight)
    return out


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """Dot product of two tensors as flat vectors: fast float32 chunks, added up exactly."""
    a, b = a.reshape(-1), b.reshape(-1)
    return math.fsum(torch.dot(a[i:i + DOT_CHUNK], b[i:i + DOT_CHUNK]).item() for i in range(0, a.numel(), DOT_CHUNK))


def _cosine(a: torch.Tensor, b: torch.Tensor, norm_a: Optional[float] = None, norm_b: Optional[float] = None
            ) -> Optional[float]:
    """Cosine of two tensors as flat vectors (``None`` if either is zero)."""
    norm_a = math.sqrt(_dot(a, a)) if norm_a is None else norm_a
    norm_b = math.sqrt(_dot(b, b)) if norm_b is None else norm_b
    if norm_a == 0 or norm_b == 0:
        return None
    return max(-1.0, min(1.0, _dot(a, b) / (norm_a * norm_b)))


# --- methods -----------------------------------------------------------------------------------------

@register("linear", elementwise=True, takes_base=False, takes_out=True)
def linear(tensors: Sequence[torch.Tensor], weights: Sequence[float], base=None, *,
           out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Weighted average: sum of w_i * theta_i (LM-Cocktail)."""
    return _weighted_sum(tensors, weights, out)


@register("task_arithmetic", needs_base=True, elementwise=True, **{"lambda": 1.0})
def task_arithmetic(tensors: Sequence[torch.Tensor], weights: Sequence[float], base: torch.Tensor,
                    **params) -> torch.Tensor:
    """Task arithmetic: theta_b + lambda * sum of w_i * delta_i (Ilharco et al. 2022)."""
    deltas = _weighted_sum([t - base for t in tensors], weights)
    return base + params["lambda"] * deltas


@register("ties", needs_base=True, nonnegative_weights=True, density=0.5, **{"lambda": 1.0})
def ties(tensors: Sequence[torch.Tensor], weights: Sequence[float], base: torch.Tensor, *, density: float,
         **params) -> torch.Tensor:
    """TIES: trim each delta to its top-density entries, elect signs, average the agreeing ones (Yadav et al. 2023)."""
    deltas = [trim_to_density(t - base, density) for t in tensors]
    return base + params["lambda"] * sign_consensus_mean(deltas, weights)


@register("dare_linear", needs_base=True, random=True, density=0.5, **{"lambda": 1.0})
def dare_linear(tensors: Sequence[torch.Tensor], weights: Sequence[float], base: torch.Tensor, *,
                density: float, generator: torch.Generator, **params) -> torch.Tensor:
    """DARE + task arithmetic: randomly drop delta entries, rescale the rest, add (Yu et al. 2023)."""
    deltas = _weighted_sum([drop_and_rescale(t - base, density, generator) for t in tensors], weights)
    return base + params["lambda"] * deltas


@register("dare_ties", needs_base=True, random=True, nonnegative_weights=True, density=0.5, **{"lambda": 1.0})
def dare_ties(tensors: Sequence[torch.Tensor], weights: Sequence[float], base: torch.Tensor, *,
              density: float, generator: torch.Generator, **params) -> torch.Tensor:
    """DARE + TIES: randomly drop delta entries, rescale the rest, then elect signs and average (Yu et al. 2023)."""
    deltas = [drop_and_rescale(t - base, density, generator) for t in tensors]
    return base + params["lambda"] * sign_consensus_mean(deltas, weights)


@register("slerp", uses_weights=False, takes_base=False, min_models=2, max_models=2, t=0.5)
def slerp(tensors: Sequence[torch.Tensor], weights=None, base=None, *, t: float) -> torch.Tensor:
    """Spherical interpolation between two models: t=0 gives the first, t=1 the second."""
    first, second = tensors
    cos = _cosine(first, second)
    if cos is None or abs(cos) > SLERP_PARALLEL:
        return first * (1 - t) + second * t
    omega = math.acos(cos)
    sin_omega = math.sin(omega)
    return first * (math.sin((1 - t) * omega) / sin_omega) + second * (math.sin(t * omega) / sin_omega)


@register("model_stock", needs_base=True, uses_weights=False, min_models=2)
def model_stock(tensors: Sequence[torch.Tensor], weights=None, base: torch.Tensor = None) -> torch.Tensor:
    """Model Stock: move from the base toward the models' mean by a ratio set by their deltas' angle (Jang et al. 2024)."""
    count = len(tensors)
    deltas = [t - base for t in tensors]
    norms = [math.sqrt(_dot(d, d)) for d in deltas]
    cosines = [_cosine(deltas[i], deltas[j], norms[i], norms[j]) for i in range(count) for j in range(i + 1, count)]
    del deltas
    cos = sum(c if c is not None else 0.0 for c in cosines) / len(cosines)
    cos = max(0.0, cos)  # deltas pointing apart: stay at the base
    ratio = count * cos / (1 + (count - 1) * cos)
    mean = _weighted_sum(tensors, [1.0 / count] * count)
    return mean * ratio + base * (1 - ratio)


# --- data-aware methods: called with each model's statistics of the tensor (None: it has none) ----------

@register("regmean", nonnegative_weights=True, statistics="gram", alpha=DEFAULT_ALPHA)
def regmean(tensors: Sequence[torch.Tensor], weights: Sequence[float], base=None, *, alpha: float,
            statistics: Optional[Sequence[torch.Tensor]] = None, transposed: bool = True,
            ridged: Optional[list] = None, name: str = "") -> torch.Tensor:
    """RegMean: each linear layer fitted to every model's outputs on its own examples' inputs (Jin et al. 2023)."""
    if statistics is None:
        return _weighted_sum(tensors, weights)
    merged, ridge = regmean_solve(tensors, statistics, weights, alpha, transposed)
    if ridge is not None and ridged is not None:
        ridged.append(name)
    return merged.to(tensors[0].dtype)


@register("fisher", nonnegative_weights=True, statistics="fisher", epsilon=DEFAULT_FISHER_FLOOR)
def fisher(tensors: Sequence[torch.Tensor], weights: Sequence[float], base=None, *, epsilon: float,
           statistics: Optional[Sequence[torch.Tensor]] = None, **_) -> torch.Tensor:
    """Fisher merging: each entry averaged with weights w_i times model i's diagonal Fisher (Matena & Raffel 2022)."""
    if statistics is None:
        return _weighted_sum(tensors, weights)
    return fisher_mean(tensors, statistics, weights, epsilon).to(tensors[0].dtype)
