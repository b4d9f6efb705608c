"""The registry of merge methods: each a pure function over one tensor of each model, registered by name.

A method receives the float32 tensors of one parameter (one per model, same shape; float64 where an
input is float64), the weights, the base model's tensor when the method needs one, and its
parameters; it returns the merged tensor in that dtype and never modifies its inputs. The engine
(``engine.py``) handles reading, dtypes and writing, and resolves per-tensor weights and parameters
(``tensor_settings.py``) before calling a method.

A parameter's default says what it is: a number (which may change from tensor to tensor, see
``schedules.py``), a bool or a string (one of ``choices``: a convention, the same for every tensor),
or ``REQUIRED`` (a number the recipe must give). A parameter named in ``per_model`` may also be given
per model (``models[i].parameters``); the method then receives a tuple with one value per model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from cocktail.errors import InputError, did_you_mean, option

REQUIRED = None  # the default of a number parameter the recipe must give


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
    choices: dict = field(default_factory=dict)  # string parameter -> the values it takes
    per_model: tuple = ()  # number parameters that may be given per model (models[i].parameters)
    weights_sum_to_one: bool = True  # False: weights scale task vectors (or only their ratio counts), any sum goes
    check: Optional[Callable[[dict, int], Optional[str]]] = None  # (parameters, model count) -> what is wrong
    statistics: Optional[str] = None  # "gram" or "fisher": data-aware, called with ``statistics=`` (see data_aware.py)

    @property
    def parameters(self) -> tuple[str, ...]:
        """The names of the parameters this method takes."""
        return tuple(self.defaults)

    def is_convention(self, name: str) -> bool:
        """True for a bool or string parameter (one value for every tensor), False for a number."""
        return isinstance(self.defaults.get(name), (bool, str))

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
            raise InputError(f"merge method {self.name} merges exactly {self.min_models} model"
                             f"{'s' * (self.min_models != 1)}{' besides the base' if self.needs_base else ''}, "
                             f"got {model_count}")
        if model_count < self.min_models:
            raise InputError(f"merge method {self.name} needs at least {self.min_models} models"
                             f"{' besides the base' if self.needs_base else ''}, got {model_count}")
        if self.max_models is not None and model_count > self.max_models:
            raise InputError(f"merge method {self.name} merges at most {self.max_models} models, got {model_count}")

    def convention(self, name: str, value: Any) -> Any:
        """``value`` of bool or string parameter ``name`` as the method takes it (``"false"`` from a
        command line is ``False``); :class:`InputError` for a value it does not take."""
        default = self.defaults[name]
        if isinstance(default, bool):
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if isinstance(value, bool):
                return value
            raise InputError(f"parameters.{name} of {self.name} must be true or false, got {value!r}")
        allowed = self.choices[name]
        if value not in allowed:
            raise InputError(f"parameters.{name} of {self.name} must be one of {', '.join(allowed)}, got {value!r}")
        return value


METHODS: dict[str, Method] = {}


def register(name: str, *, needs_base: bool = False, uses_weights: bool = True, takes_base: bool = True,
             min_models: int = 1, max_models: Optional[int] = None, random: bool = False,
             nonnegative_weights: bool = False, elementwise: bool = False, takes_out: bool = False,
             choices: Optional[dict] = None, per_model: Sequence[str] = (), weights_sum_to_one: bool = True,
             check: Optional[Callable[[dict, int], Optional[str]]] = None, statistics: Optional[str] = None,
             **defaults):
    """Register ``fn(tensors, weights, base, **params) -> tensor`` as merge method ``name``.

    ``defaults`` names every parameter the method takes, with its default value (see the module docstring);
    ``check(parameters, model_count)`` says what is wrong with a tensor's parameters taken together.
    """

    def decorate(fn):
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        METHODS[name] = Method(name, fn, needs_base, uses_weights, dict(defaults), summary, takes_base,
                               min_models, max_models, random, nonnegative_weights, elementwise, takes_out,
                               dict(choices or {}), tuple(per_model), weights_sum_to_one, check, statistics)
        return fn

    return decorate


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise InputError(f"unknown merge method {name!r}; {did_you_mean(name, METHODS)}"
                         f"(choose from {', '.join(sorted(METHODS))})") from None


# Ranges of number parameters, by name, for the methods where the name has that meaning.
UNIT_T = ("slerp",)  # t is a position between two models


def parameter_problem(name: str, value: float, method: str = "") -> Optional[str]:
    """Why ``value`` is not allowed for number parameter ``name`` of ``method`` (``None`` if it is)."""
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if name == "density" and not 0 < value <= 1:
        return f"must be in (0, 1] (the fraction of each difference kept), got {value:g}"
    if name == "t" and method in UNIT_T + ("",) and not 0 <= value <= 1:
        return f"must be in [0, 1] (0 gives the first model, 1 the second), got {value:g}"
    if name == "alpha" and method in ("regmean", "") and not 0 <= value <= 1:
        return f"must be in [0, 1] (the share of the Gram matrices' off-diagonal entries kept), got {value:g}"
    if name == "epsilon" and method in ("fisher", ""):
        return None if value > 0 else f"must be more than 0 (the floor added to every Fisher entry), got {value:g}"
    if name in ("gamma", "epsilon", "select_topk") and not 0 <= value <= 1:
        return f"must be in [0, 1], got {value:g}"
    if name == "max_iter" and (value < 1 or value != int(value)):
        return f"must be a whole number of at least 1, got {value:g}"
    if name in ("t", "tol") and value < 0:
        return f"must be at least 0, got {value:g}"
    return None


def each(value: Any, count: int) -> tuple:
    """A per-model parameter as one value per model (a single number applies to every model)."""
    if isinstance(value, (tuple, list)):
        if len(value) != count:
            raise ValueError(f"{len(value)} values for {count} models")
        return tuple(value)
    return (value,) * count
