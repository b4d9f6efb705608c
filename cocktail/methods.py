"""Merge methods: small pure functions over one tensor of each model, registered by name.

A method receives the float32 tensors of one parameter (one per model, same shape), the weights,
the base model's tensor when the method needs one, and its parameters; it returns the merged float32
tensor and never modifies its inputs. The engine (``runner.py``) handles reading, dtypes and writing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from .errors import InputError


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[..., torch.Tensor]
    needs_base: bool = False
    uses_weights: bool = True
    defaults: dict = field(default_factory=dict)
    summary: str = ""

    def __call__(self, tensors: Sequence[torch.Tensor], weights: Sequence[float],
                 base: Optional[torch.Tensor] = None, **params) -> torch.Tensor:
        return self.fn(tensors, weights, base, **{**self.defaults, **params})


METHODS: dict[str, Method] = {}


def register(name: str, *, needs_base: bool = False, uses_weights: bool = True, **defaults):
    """Register ``fn(tensors, weights, base, **params) -> tensor`` as merge method ``name``."""

    def decorate(fn):
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        METHODS[name] = Method(name, fn, needs_base, uses_weights, dict(defaults), summary)
        return fn

    return decorate


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise InputError(f"unknown merge method {name!r} (choose from {', '.join(sorted(METHODS))})") from None


@register("linear")
def linear(tensors: Sequence[torch.Tensor], weights: Sequence[float], base=None) -> torch.Tensor:
    """Weighted average: sum of w_i * theta_i (LM-Cocktail)."""
    out = tensors[0] * weights[0]
    for tensor, weight in zip(tensors[1:], weights[1:]):
        out.add_(tensor, alpha=weight)
    return out
