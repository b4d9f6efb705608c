"""mergekit's configuration files, read as mergekit documents them, turned into cocktail recipe data.

A mergekit config (``merge_method``, ``base_model``, ``models`` with ``model`` and ``parameters``,
``slices`` of ``sources`` with ``layer_range``, ``dtype``, ``tokenizer_source``...) is told apart from a
cocktail recipe by its keys (:func:`is_mergekit_config`). :func:`recipe_data` turns it into the plain
data of a cocktail recipe, which then goes through the same schema checks as any recipe, so
``cocktail run mergekit.yml`` merges what ``mergekit-yaml mergekit.yml`` merges:

- mergekit's defaults and conventions for the method become explicit parameters (``MERGEKIT_DEFAULTS``:
  TIES keeps int(density·n) entries and elects + where the weighted deltas cancel, DARE keeps each
  delta's L1 norm, density defaults to 1, model_stock does not clamp...);
- a parameter's precedence (the model's own, then the slice's, then the config's) becomes one schedule
  whose entries are tried in that order; a filter (a substring of the tensor name in mergekit) becomes a
  regular expression matching that substring; a gradient stays a gradient over the layers;
- ``models[i].parameters.weight`` becomes the model's weight; ``density``, ``gamma`` and ``epsilon`` are
  per-model parameters; the rest are the method's parameters.

- ``slices`` that take the same layers from every model, one after the other, all of them, become
  per-layer entries: each layer's value at its t within its slice, as mergekit evaluates gradients.

What a recipe cannot express is refused in one line (:class:`RecipeError`): slices that cut, stack or
reorder layers (a different architecture), ``modules``, a union tokenizer, a chat template.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from cocktail.errors import RecipeError
from cocktail.merging.schedules import LAYER

#: Keys only a mergekit config has (a cocktail recipe names its models with ``path``, mergekit with ``model``).
MERGEKIT_ONLY_KEYS = ("slices", "modules", "tokenizer_source", "tokenizer", "chat_template", "out_dtype")
MERGEKIT_KEYS = ("merge_method", "base_model", "models", "slices", "modules", "dtype", "out_dtype", "parameters",
                 "tokenizer_source", "tokenizer", "chat_template", "name")

GTA = ("task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della",
       "della_linear")
#: mergekit's defaults, as cocktail parameters, where cocktail's own default differs (or cocktail has one and
#: mergekit none): applied before the config's parameters.
MERGEKIT_DEFAULTS = {
    "ties": {"density": 1.0, "rounding": "floor", "zero_sign": "positive", "rescale": "none", "normalize": True},
    "dare_ties": {"density": 1.0, "rescale": "l1", "zero_sign": "positive", "normalize": False},
    "dare_linear": {"density": 1.0, "rescale": "l1", "normalize": False},
    "model_stock": {"clamp": False},
}
#: Per method: mergekit parameters that are per model in cocktail too (models[i].parameters).
PER_MODEL = {name: ("density",) for name in GTA if name != "task_arithmetic"}
PER_MODEL.update(breadcrumbs=("density", "gamma"), breadcrumbs_ties=("density", "gamma"),
                 della=("density", "epsilon"), della_linear=("density", "epsilon"))
#: Per method: mergekit's shared parameters cocktail takes under the same name.
SHARED = {name: ("lambda", "normalize") for name in GTA}
SHARED.update(sce=("select_topk",), ram=("epsilon",), ramplus_tl=("r", "alpha", "epsilon"), model_stock=("filter_wise",),
              nearswap=("t",), slerp=("t",), nuslerp=("nuslerp_row_wise", "nuslerp_flatten"),
              multislerp=("normalize_weights", "eps"), karcher=("max_iter", "tol"), passthrough=("scale",),
              arcee_fusion=(), linear=())
#: How a method uses mergekit's base model.
BASE_EXCLUDED = GTA + ("sce", "ram", "ramplus_tl", "model_stock", "nearswap", "arcee_fusion", "nuslerp", "multislerp")
BASE_IS_INPUT = ("linear", "karcher", "passthrough")  # the base is one more input (mergekit adds it when not listed)
WEIGHTED = GTA + ("linear", "nuslerp", "multislerp")  # methods where each model needs a weight
MERGEKIT_METHODS = tuple(SHARED)
DTYPES = {"float32": "float32", "fp32": "float32", "float": "float32", "float16": "float16", "fp16": "float16",
          "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
LAYER_NUMBER = r"(\d+)"  # in schedules.LAYER
#: Tensors outside the layers that come before them (mergekit's "pre-weights"): the embeddings.
EMBEDDING = r"(?:embed|(?:^|\.)(?:wte|wpe)\.)"
#: Parameters cocktail takes as one value for every tensor (true/false).
ONE_VALUE = ("normalize", "filter_wise", "nuslerp_row_wise", "nuslerp_flatten", "normalize_weights")


def is_mergekit_config(data: Any) -> bool:
    """True when ``data`` (a parsed YAML file) is a mergekit config rather than a cocktail recipe."""
    if not isinstance(data, dict) or "merge_method" not in data:
        return False
    if any(key in data for key in MERGEKIT_ONLY_KEYS):
        return True
    models = data.get("models")
    return (isinstance(models, list) and bool(models)
            and all(isinstance(m, dict) and "model" in m and "path" not in m for m in models))


def _refuse(source: str, message: str) -> RecipeError:
    return RecipeError(f"{source}: mergekit config: {message}")


# --- parameter settings --------------------------------------------------------------------------------

def _entries(setting: Any, where: str, source: str) -> list[dict]:
    """A mergekit setting as cocktail schedule entries (``{filter?, value}``), stopping at the first
    entry that matches every tensor (mergekit never looks past it)."""
    if isinstance(setting, dict):
        setting = [setting]
    if not isinstance(setting, list) or not setting or not all(isinstance(e, dict) for e in setting):
        return [{"value": setting}]
    entries = []
    for i, entry in enumerate(setting):
        unknown = sorted(set(entry) - {"filter", "value"})
        if unknown or "value" not in entry:
            raise _refuse(source, f"{where}[{i}] must have a value (and a filter), got keys {sorted(entry)}")
        pattern = entry.get("filter")
        if pattern is None or pattern == "*":
            entries.append({"value": entry["value"]})
            break
        if not isinstance(pattern, str):
            raise _refuse(source, f"{where}[{i}].filter must be a string, got {pattern!r}")
        entries.append({"filter": re.escape(pattern), "value": entry["value"]})
    return entries


def _chain_entries(settings: list[tuple[str, Any]], source: str) -> list[dict]:
    """Settings in falling precedence as cocktail schedule entries: the first entry that matches a tensor wins, as
    mergekit takes the first scope whose setting has a value for it."""
    entries: list[dict] = []
    for where, setting in settings:
        entries += _entries(setting, where, source)
        if "filter" not in entries[-1]:
            break
    return entries


def _one_value(name: str, value: Any, source: str) -> Any:
    """A setting cocktail takes as one value for every tensor (a bool, a string)."""
    if isinstance(value, list):
        raise _refuse(source, f"parameter {name} is given per tensor ({value!r}); cocktail takes one value of "
                              f"{name} for every tensor")
    return value


# --- models ----------------------------------------------------------------------------------------------

def _model_path(reference: Any, where: str, source: str, cwd: Path) -> dict:
    """A mergekit model reference (``path``, ``hub/id``, ``model+lora``) as a cocktail model entry."""
    if not isinstance(reference, str) or not reference.strip():
        raise _refuse(source, f"{where} must be a model path or hub id (a string), got {reference!r}")
    model, plus, lora = reference.partition("+")
    entry = {"path": _local(lora if plus else model, cwd)}
    if plus:
        entry["base"] = _local(model, cwd)  # a LoRA adapter applied to the model, as mergekit's model+lora
    return entry


def _local(reference: str, cwd: Path) -> str:
    """A local path as mergekit reads it (relative to the current folder), made absolute; a hub id as given."""
    path = Path(reference).expanduser()
    candidate = path if path.is_absolute() else cwd / path
    return str(candidate.resolve()) if candidate.exists() else reference


def _layer_count(path: str) -> Optional[int]:
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    try:
        values = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for container in (values, values.get("text_config") or {}) if isinstance(values, dict) else ():
        for key in LAYER_COUNT_KEYS:
            if isinstance(container.get(key), int):
                return container[key]
    return None


@dataclass
class Slice:
    """One output slice: its layers (``hi`` None: all of them), its parameters, its sources' own parameters."""

    lo: int
    hi: Optional[int]
    parameters: dict
    own: dict  # model reference -> that source's parameters
    where: dict  # model reference -> where the source is written (for messages)


def _inputs(data: dict, source: str, cwd: Path) -> tuple[list[dict], list[Slice]]:
    """The config's input models (``{reference, where}``) and its output slices: ``models`` is one slice of
    every layer; ``slices`` must take, from every source, the same layers, one after another, all of them."""
    if data.get("modules"):
        raise _refuse(source, "modules (several output modules) are not supported; use models or slices")
    if data.get("models") and data.get("slices"):
        raise _refuse(source, "give either models or slices, not both")
    if data.get("models"):
        models = data["models"]
        if not isinstance(models, list):
            raise _refuse(source, f"models must be a list, got {models!r}")
        inputs, own, where = [], {}, {}
        for i, entry in enumerate(models):
            if not isinstance(entry, dict) or "model" not in entry:
                raise _refuse(source, f"models[{i}] must be a mapping with a model, got {entry!r}")
            unknown = sorted(set(entry) - {"model", "parameters"})
            if unknown:
                raise _refuse(source, f"models[{i}] has unknown key {unknown[0]!r} (a model entry has model and "
                                      f"parameters)")
            inputs.append({"reference": entry["model"], "where": f"models[{i}]"})
            own[entry["model"]] = _mapping(entry.get("parameters"), f"models[{i}].parameters", source)
            where[entry["model"]] = f"models[{i}]"
        return inputs, [Slice(0, None, {}, own, where)]
    slices = data.get("slices")
    if not isinstance(slices, list) or not slices:
        raise _refuse(source, "give models (or slices) to merge")
    found: list[Slice] = []
    references: Optional[list] = None
    for s, out in enumerate(slices):
        if not isinstance(out, dict) or not isinstance(out.get("sources"), list) or not out["sources"]:
            raise _refuse(source, f"slices[{s}] must have a list of sources")
        if out.get("base_model") is not None or out.get("residual_weight") is not None:
            raise _refuse(source, f"slices[{s}].base_model and residual_weight are not supported; set base_model at "
                                  f"the top")
        spans, own, where = set(), {}, {}
        for i, entry in enumerate(out["sources"]):
            at = f"slices[{s}].sources[{i}]"
            if not isinstance(entry, dict) or "model" not in entry:
                raise _refuse(source, f"{at} must be a mapping with a model and a layer_range")
            span = entry.get("layer_range")
            if not (isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) for v in span)
                    and 0 <= span[0] < span[1]):
                raise _refuse(source, f"{at}.layer_range must be [first, end] layers, got {span!r}")
            spans.add(tuple(span))
            own[entry["model"]] = _mapping(entry.get("parameters"), f"{at}.parameters", source)
            where[entry["model"]] = at
        slice_references = [e["model"] for e in out["sources"]]
        references = references or slice_references
        expected = found[-1].hi if found else 0
        if len(spans) != 1 or slice_references != references or next(iter(spans))[0] != expected:
            raise _refuse(source, f"slices[{s}] does not take the next layers ({expected} on) from every model of "
                                  f"slices[0]: slices that stack, cut or reorder layers make a different architecture "
                                  f"(a frankenmerge), which cocktail does not build")
        lo, hi = next(iter(spans))
        found.append(Slice(lo, hi, _mapping(out.get("parameters"), f"slices[{s}].parameters", source), own, where))
    for reference in references:
        layers = _layer_count(_model_path(reference, "slices", source, cwd)["path"])
        if layers is not None and found[-1].hi != layers:
            raise _refuse(source, f"the slices take layers 0 to {found[-1].hi} of {reference}, which has {layers}: "
                                  f"a merge that cuts layers makes a different architecture, which cocktail does "
                                  f"not build")
    inputs = [{"reference": r, "where": found[0].where[r]} for r in references]
    return inputs, found


def _mapping(value: Any, where: str, source: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _refuse(source, f"{where} must be a mapping, got {value!r}")
    return value


def _at(values: list, t: float) -> Any:
    """A mergekit gradient's value at ``t`` in [0, 1] (numbers interpolate, anything else is picked)."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return values[int(t * (len(values) - 1))]
    scaled = t * (len(values) - 1)
    low = int(scaled)
    high = min(len(values) - 1, low + 1)
    return (1 - (scaled - low)) * values[low] + (scaled - low) * values[high]


def _both(a: str, b: str) -> str:
    """A pattern found in a name that holds both ``a`` and ``b`` (RE2, which matches filters, has no lookahead)."""
    return f"(?:{a}).*(?:{b})|(?:{b}).*(?:{a})"


def _where(layer: Optional[int], pattern: Optional[str], embedding: Optional[bool] = None) -> str:
    """A filter for the tensors of ``layer`` whose name matches ``pattern``; ``layer`` None: a tensor of no
    layer (``embedding`` True: before the layers). The first entry found wins, so the tensors outside the
    layers need no "not a layer" condition: the layer entries come first and take every layer's tensors
    (:func:`_per_layer` asks each slice's settings to end in a catch-all), and the entries before the
    layers come before those after them."""
    if layer is not None:
        layer_pattern = LAYER.pattern.replace(LAYER_NUMBER, str(layer))
        return _both(layer_pattern, pattern) if pattern else layer_pattern
    side = EMBEDDING if embedding else ""
    if side and pattern:
        return _both(side, pattern)
    return side or pattern or "^"


def _per_layer(chains: list[tuple[Slice, list[dict]]], source: str) -> Any:
    """Settings of several slices as one schedule, as mergekit evaluates them: each layer's entries at its t
    within its slice; the tensors outside the layers at t = 0, the embeddings with the first slice's
    settings, the others (final norm, head) with the last slice's."""
    entries = []
    for piece, chain in chains:
        count = piece.hi - piece.lo
        for layer in range(piece.lo, piece.hi):
            t = (layer - piece.lo) / (count - 1) if count > 1 else 1.0
            for entry in chain:
                value = _at(entry["value"], t) if isinstance(entry["value"], list) else entry["value"]
                entries.append({"filter": _where(layer, entry.get("filter")), "value": value})
    first, last = ([{**e, "value": _at(e["value"], 0) if isinstance(e["value"], list) else e["value"]} for e in chain]
                   for _, chain in (chains[0], chains[-1]))
    sides = [(None, first)] if first == last else [(True, first), (False, last)]
    entries += [{"filter": _where(None, e.get("filter"), side), "value": e["value"]} for side, chain in sides
                for e in chain]
    if not any(chain for _, chain in chains):  # no slice sets it: the method's default
        return None
    complete = all(chain and "filter" not in chain[-1] for _, chain in chains)
    if not complete and len(chains) > 1:
        raise _refuse(source, "slices whose parameters hold only filtered entries (no entry without a filter) "
                              "cannot be expressed as one cocktail schedule: give each slice's parameter a default")
    values = {json.dumps(e["value"]) for e in entries}
    if complete and len(values) == 1:  # one value for every tensor
        return entries[0]["value"]
    return entries or None


# --- the whole config ------------------------------------------------------------------------------------

def recipe_data(data: dict, source: str = "<mergekit config>", cwd: Optional[Path] = None) -> dict:
    """The cocktail recipe data that merges what mergekit merges for config ``data``."""
    cwd = Path.cwd() if cwd is None else Path(cwd)
    unknown = sorted(set(data) - set(MERGEKIT_KEYS))
    if unknown:
        raise _refuse(source, f"unknown key {unknown[0]!r} (mergekit's keys: {', '.join(MERGEKIT_KEYS)})")
    method = data.get("merge_method")
    if method not in SHARED:
        raise _refuse(source, f"merge_method {method!r} is not one cocktail reproduces (it does: "
                              f"{', '.join(sorted(SHARED))})")
    if data.get("chat_template") is not None:
        raise _refuse(source, "chat_template is not supported: the output takes the tokenizer files as they are")
    inputs, slices = _inputs(data, source, cwd)
    top = data.get("parameters") or {}
    if not isinstance(top, dict):
        raise _refuse(source, f"parameters must be a mapping, got {top!r}")

    base_reference = data.get("base_model")
    base_entry = _model_path(base_reference, "base_model", source, cwd) if base_reference is not None else None
    if base_entry is not None and "base" in base_entry:
        raise _refuse(source, "a LoRA adapter (model+lora) as base_model is not supported")
    if base_entry is not None and method in BASE_IS_INPUT and all(i["reference"] != base_reference for i in inputs):
        inputs.append({"reference": base_reference, "where": "base_model"})
    if method == "slerp":
        if base_entry is None:
            raise _refuse(source, "slerp needs a base_model (t=0 gives the base model)")
        others = [i for i in inputs if i["reference"] != base_reference]
        inputs = [{"reference": base_reference, "where": "base_model"}] + others
    elif method in BASE_EXCLUDED:
        inputs = [i for i in inputs if i["reference"] != base_reference]

    def setting(name: str, reference: Any = None) -> Any:
        """The schedule of parameter ``name`` (of model ``reference``, for a per-model one), in mergekit's
        precedence: the source's own value, then the slice's, then the config's."""
        chains = []
        for index, piece in enumerate(slices):
            found = []
            if reference is not None and name in piece.own.get(reference, {}):
                found.append((f"{piece.where[reference]}.parameters.{name}", piece.own[reference][name]))
            if name in piece.parameters:
                found.append((f"slices[{index}].parameters.{name}", piece.parameters[name]))
            if name in top:
                found.append((f"parameters.{name}", top[name]))
            chains.append((piece, _chain_entries(found, source)))
        if len(slices) == 1:  # every layer: gradients over the slice are gradients over the model
            entries = chains[0][1]
            if len(entries) == 1 and "filter" not in entries[0]:
                return entries[0]["value"]
            return entries or None
        return _per_layer(chains, source)

    models = []
    for entry in inputs:
        model = _model_path(entry["reference"], entry["where"], source, cwd)
        if method in WEIGHTED:
            model["weight"] = setting("weight", entry["reference"])
            if model["weight"] is None:
                raise _refuse(source, f"{entry['where']} has no weight (mergekit's {method} needs one per model)")
        own = {name: setting(name, entry["reference"]) for name in PER_MODEL.get(method, ())}
        if any(value is not None for value in own.values()):
            model["parameters"] = {name: value for name, value in own.items() if value is not None}
        models.append(model)

    parameters = dict(MERGEKIT_DEFAULTS.get(method, {}))  # mergekit's defaults where cocktail's differ
    for name in SHARED[method]:  # passthrough's scale is per input in mergekit: its one model's
        value = setting(name, inputs[0]["reference"] if method == "passthrough" else None)
        if value is not None:
            parameters[name] = value
    rescale = setting("rescale")
    if rescale is not None and method in GTA and method != "task_arithmetic":  # mergekit: rescale to the L1 norm
        parameters["rescale"] = "l1" if _one_value("rescale", rescale, source) else "none"
    for name in ONE_VALUE:
        if name in parameters:
            parameters[name] = _one_value(name, parameters[name], source)
    normalize = False
    if method == "linear":  # mergekit's linear divides by the weights' sum unless told not to
        given = setting("normalize")
        normalize = True if given is None else bool(_one_value("normalize", given, source))

    recipe: dict[str, Any] = {"merge_method": method, "models": models, "parameters": parameters}
    if base_entry is not None and method in BASE_EXCLUDED:
        recipe["base_model"] = base_entry["path"]
    if normalize:
        recipe["normalize"] = True
    dtype = data.get("out_dtype") or data.get("dtype")
    if dtype is not None:
        if dtype not in DTYPES:
            raise _refuse(source, f"dtype {dtype!r} is not one cocktail writes (choose from {', '.join(DTYPES)})")
        recipe["dtype"] = DTYPES[dtype]
    config_from = _tokenizer_source(data, base_entry, cwd, source)
    if config_from is not None and config_from != models[0]["path"]:
        recipe["config_from"] = config_from
    return recipe


def _tokenizer_source(data: dict, base_entry: Optional[dict], cwd: Path, source: str) -> Optional[str]:
    """The model whose config and tokenizer the output takes: mergekit's tokenizer source, else its base model."""
    choice = data.get("tokenizer_source")
    tokenizer = data.get("tokenizer")
    if tokenizer is not None:
        if not isinstance(tokenizer, dict) or set(tokenizer) - {"source"}:
            raise _refuse(source, "tokenizer settings other than source (tokens, pad_to_multiple_of) are not supported")
        choice = tokenizer.get("source")
    if choice == "union":
        raise _refuse(source, "tokenizer_source: union (a tokenizer built from every model's vocabulary) is not "
                              "supported; cocktail merges models that share one vocabulary (use base or a model)")
    if choice is None or choice == "base":
        return base_entry["path"] if base_entry is not None else None
    if isinstance(choice, dict):
        raise _refuse(source, f"tokenizer source {choice!r} is not supported; give base or a model")
    return _model_path(choice, "tokenizer_source", source, cwd)["path"]
