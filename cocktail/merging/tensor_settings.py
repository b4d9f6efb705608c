"""The weights and parameters each tensor is merged with, resolved and checked before anything is written.

Weights (``models[i].weight``) and method parameters (``parameters.<name>``) may be numbers or
per-tensor schedules (``schedules.py``). Here they become, for every merged tensor of a plan, one
weight per model and one number per parameter; every value is checked (weights sum to 1 for each
tensor unless normalised, parameters in range) so a bad recipe fails before the first byte is written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from cocktail.errors import DOOR, InputError, did_you_mean, few_names, option
from cocktail.io.checkpoints import TRANSFORMER
from cocktail.merging.plan import MERGE, Plan, PlannedTensor
from cocktail.merging.registry import REQUIRED, Method, parameter_problem
from cocktail.merging.schedules import Schedule, TensorName, is_number, layer_count
from cocktail.merging.weights import normalized, sums_to_one, weight_sum

SHOW = 3  # tensors named in a message before "and N more"


@dataclass(frozen=True)
class TensorSettings:
    """What one tensor is merged with: a weight per model and a number per method parameter."""

    weights: tuple[float, ...]
    parameters: dict


def weight_key(index: int) -> str:
    """Where model ``index``'s weight is given, as the user's door spells it: ``--weights`` (its 1st value),
    ``weights[0]`` from Python, ``models[0].weight`` in a recipe."""
    door = DOOR.get()
    if door == "cli":
        return f"--weights (its {ordinal(index + 1)} value)"
    return f"weights[{index}]" if door == "python" else f"models[{index}].weight"


def ordinal(n: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``4th``, ..., ``11th``, ``21st``."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def parameter_key(name: str) -> str:
    return f"parameters.{name}"


def has_weight_schedules(weights: Optional[Sequence[Any]]) -> bool:
    """True when some model's weight is a schedule (a list) rather than a plain number."""
    return bool(weights) and any(w is not None and not is_number(w) for w in weights)


def check_method_use(method: Method, weights: Sequence[Any], base_model: Optional[str], parameters: dict,
                     seed: Any = 0, model_parameters: Optional[Sequence[Optional[dict]]] = None) -> None:
    """Checks that need no file: model count, base, weights allowed, parameter names and syntax, seed."""
    method.check_inputs(len(weights), bool(base_model))
    given = [i for i, w in enumerate(weights) if w is not None]
    if given and not method.uses_weights:
        how = {"slerp": f"its parameter t sets the mix ({option('parameter_t')})",
               "model_stock": "it computes its own mix from the models"}
        given_as = weight_key(given[0]) if DOOR.get() == "recipe" else option("weights")
        raise InputError(f"merge method {method.name} takes no weights, but {given_as} is given: "
                         f"{how.get(method.name, 'remove them')}")
    for i, weight in enumerate(weights):
        if weight is not None and not is_number(weight):
            Schedule.parse(weight, weight_key(i))
    parameter_schedules(method, parameters, model_parameters)
    model_parameter_schedules(method, model_parameters)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")


def parameter_schedules(method: Method, parameters: Optional[dict],
                        model_parameters: Optional[Sequence[Optional[dict]]] = None) -> dict[str, Any]:
    """Parse the recipe's parameters for ``method``: a :class:`Schedule` per number parameter, the value of
    each bool or string parameter (a convention, one for every tensor). Unknown names are refused, and so is
    a missing required parameter (unless every model gives it)."""
    parameters = dict(parameters or {})
    for name in parameters:
        if name not in method.defaults:
            takes = f"its parameters: {', '.join(method.parameters)}" if method.parameters else "it takes none"
            raise InputError(f"merge method {method.name} has no parameter {name!r}; "
                             f"{did_you_mean(name, method.parameters)}({takes})")
    for name, default in method.defaults.items():
        per_model = model_parameters and all(p and name in p for p in model_parameters)
        if default is REQUIRED and name not in parameters and not per_model:
            raise InputError(f"merge method {method.name} needs parameter {name}, which has no default: "
                             f"set parameters.{name} (--param {name}=... on the command line)")
    return {name: method.convention(name, value) if method.is_convention(name)
            else Schedule.parse(value, parameter_key(name)) for name, value in parameters.items()}


def model_parameter_schedules(method: Method, model_parameters: Optional[Sequence[Optional[dict]]]
                              ) -> list[dict[str, Schedule]]:
    """Parse each model's own parameters (``models[i].parameters``): only the per-model ones of ``method``."""
    parsed = []
    for i, own in enumerate(model_parameters or []):
        schedules = {}
        for name, value in (own or {}).items():
            if name not in method.per_model:
                which = (f"its per-model parameters: {', '.join(method.per_model)}" if method.per_model
                         else "it takes none per model")
                raise InputError(f"models[{i}].parameters.{name}: merge method {method.name} takes no parameter "
                                 f"{name!r} per model ({which})")
            schedules[name] = Schedule.parse(value, f"models[{i}].parameters.{name}")
        parsed.append(schedules)
    return parsed


def tensor_generator(seed: int, component: str, canonical: str) -> torch.Generator:
    """A random generator for one tensor, from the recipe's seed and the tensor's canonical name.

    It does not depend on the order tensors are merged in, nor on a model prefix such as ``bert.``.
    """
    digest = hashlib.sha256(f"{seed}\0{component}\0{canonical}".encode()).digest()
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return generator


def _checked(method: Method, schedule: Schedule, value: float, tensor: str) -> float:
    """``value`` of ``schedule`` for ``tensor``, or :class:`InputError` when the method does not take it."""
    problem = parameter_problem(schedule.key.rpartition(".")[2], value, method.name)
    if problem:
        where = "" if schedule.is_constant else f" (tensor {tensor})"
        raise InputError(f"{schedule.key} {problem}{where}")
    return value


def _tensor_name(planned: PlannedTensor) -> TensorName:
    return TensorName.of(planned.name, planned.canonical)


def resolve_settings(plan: Plan, method: Method, weights: Optional[Sequence[Any]], parameters: Optional[dict],
                     normalize: bool = False, model_parameters: Optional[Sequence[Optional[dict]]] = None
                     ) -> tuple[list[Optional[TensorSettings]], list[str]]:
    """Per-tensor settings, aligned with ``plan.tensors`` (``None`` for copied tensors), and warnings.

    ``weights`` holds one entry per model: a number (already checked, e.g. by ``fixed_weights``), a
    schedule, or ``None`` for all (equal weights). ``model_parameters`` holds each model's own values of
    the method's per-model parameters; where some model has one, the method gets a tuple (one value per
    model). Raises :class:`InputError` for any bad value.
    """
    count = len(plan.checkpoints)
    merged = [(i, t) for i, t in enumerate(plan.tensors) if t.action == MERGE]
    layers = layer_count(t.canonical for _, t in merged if t.component == TRANSFORMER)
    parsed = parameter_schedules(method, parameters, model_parameters)
    conventions = {name: value for name, value in parsed.items() if method.is_convention(name)}
    params = {name: value for name, value in parsed.items() if name not in conventions}
    own = model_parameter_schedules(method, model_parameters)
    per_model = sorted({name for schedules in own for name in schedules})
    used: dict[int, set[int]] = {}  # id(schedule) -> entry indices that matched a tensor
    every_schedule: list[Schedule] = list(params.values()) + [s for schedules in own for s in schedules.values()]

    scheduled = method.uses_weights and has_weight_schedules(weights)
    weight_schedules: list[Schedule] = []
    if scheduled:
        if any(w is None for w in weights):
            missing = ", ".join(weight_key(i) for i, w in enumerate(weights) if w is None)
            raise InputError(f"weights are given for some models but not {missing}")
        weight_schedules = [Schedule.parse(w, weight_key(i)) for i, w in enumerate(weights)]
        every_schedule += weight_schedules
    elif method.uses_weights and weights is not None and all(w is not None for w in weights):
        constant = tuple(float(w) for w in weights)
    else:
        constant = tuple([1.0 / count] * count)

    settings: list[Optional[TensorSettings]] = [None] * len(plan.tensors)
    sum_errors: list[tuple[str, list[float]]] = []
    negative: list[str] = []
    for index, planned in merged:
        tensor = _tensor_name(planned)
        if scheduled:
            values = []
            for schedule in weight_schedules:
                found = schedule.lookup(tensor, layers)
                if found is None:
                    raise InputError(f"{schedule.key}: no entry matches tensor {planned.name}; "
                                     f"add a default entry (a value without filter) at the end")
                used.setdefault(id(schedule), set()).add(found[0])
                values.append(found[1])
            if normalize:
                values = normalized(values, f" of tensor {planned.name}")
            elif method.weights_sum_to_one and not sums_to_one(values):
                sum_errors.append((planned.name, values))
            if any(v < 0 for v in values):
                negative.append(planned.name)
            tensor_weights = tuple(values)
        else:
            tensor_weights = constant
        if method.nonnegative_weights and any(w < 0 for w in tensor_weights):
            where = f" for tensor {planned.name}" if scheduled else ""
            raise InputError(f"merge method {method.name} needs non-negative weights, got {list(tensor_weights)}{where}")
        values_by_name = {**method.defaults, **conventions}
        for name, schedule in params.items():
            found = schedule.lookup(tensor, layers)
            if found is None:
                continue  # filters without a default: the method's default applies
            used.setdefault(id(schedule), set()).add(found[0])
            values_by_name[name] = _checked(method, schedule, found[1], planned.name)
        for name in per_model:
            values = []
            for schedules in own:
                found = schedules[name].lookup(tensor, layers) if name in schedules else None
                if found is None:
                    values.append(values_by_name[name])
                    continue
                used.setdefault(id(schedules[name]), set()).add(found[0])
                values.append(_checked(method, schedules[name], found[1], planned.name))
            values_by_name[name] = tuple(values)
        missing = [name for name, value in values_by_name.items() if value is REQUIRED]
        if missing:
            raise InputError(f"merge method {method.name} needs parameter {missing[0]} for tensor {planned.name} "
                             f"(no entry of parameters.{missing[0]} matches it)")
        problem = method.check(values_by_name, count) if method.check else None
        if problem:
            raise InputError(f"merge method {method.name}: {problem} (tensor {planned.name})")
        settings[index] = TensorSettings(tensor_weights, values_by_name)

    if sum_errors:
        name, values = sum_errors[0]
        more = f" (and {len(sum_errors) - 1} more tensors)" if len(sum_errors) > 1 else ""
        raise InputError(f"weights for tensor {name} sum to {weight_sum(values):g}, not 1: {values}{more}; "
                         f"adjust the weights or pass {option('normalize')} to divide them by their sum")
    warnings = []
    if negative:
        warnings.append(f"negative weights for {len(negative)} tensors ({few_names(negative, SHOW)}): "
                        f"this extrapolates beyond the models")
    for schedule in every_schedule:
        matched = used.get(id(schedule), set())
        for i, entry in enumerate(schedule.entries):
            if entry.pattern is not None and i not in matched:
                hit_before = any(entry.matches(_tensor_name(t)) for _, t in merged)
                why = "an earlier entry takes every tensor it matches" if hit_before else "it matches no merged tensor"
                warnings.append(f"{entry.key}.filter {entry.filter!r} is never used: {why}")
    return settings, warnings
