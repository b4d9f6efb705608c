"""The recipe schema: every key a recipe has, and every check of its values, run up front.

A recipe file is checked whole before any work starts. Each problem names its key path
(``models[1].weight``) and, where the YAML parser knows it, the file and line, e.g.::

    my.yaml:7: models[1].weight: expected a number, a list of numbers or a list of {filter, value}
    mappings, got 'half' (a string)

Relative paths in a recipe are relative to the recipe file's folder, not to the current directory.
Merge methods are checked against the live registry (``cocktail.merging.methods.METHODS``), so methods added
there are accepted here without a change.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

from cocktail.errors import InputError, RecipeError, did_you_mean, few_names, quoted
from cocktail.io.checkpoints import looks_like_hub_id
from cocktail.io.patterns import compile_pattern
from cocktail.merging.methods import METHODS
from cocktail.merging.schedules import is_number
from cocktail.recipe.choices import DTYPES, MODEL_TYPES
from cocktail.recipe.scoring import DEVICE_MAPS, SCORE_DTYPES, parse_memory_caps
from cocktail.recipe.sizes import parse_size
from cocktail.recipe.weights_from import KEYS as WEIGHTS_FROM_KEYS
from cocktail.recipe.weights_from import LAYER_SPACE
from cocktail.recipe.yaml_lines import SET, KeyPath, key_path

# Keys of the recipe that name files or models, resolved against the recipe file's folder.
MODEL_PATH_KEYS = (("base_model",), ("config_from",))

#: Every key of a recipe that names a file or folder the run reads (``"*"``: each item of a list), what
#: it names (a ``"model"``: a local path, or a hub id that stays as it is; or a ``"file"``) and what
#: messages call it. The one list of them: relative paths are resolved against the recipe's folder
#: from it, and the output is checked against every path on it before anything is removed
#: (``Recipe.read_paths``).
READ_PATH_KEYS: tuple[tuple[KeyPath, str, str], ...] = (
    (("models", "*", "path"), "model", "model"),
    (("models", "*", "base"), "model", "adapter base"),
    (("base_model",), "model", "base model"),
    (("config_from",), "model", "config_from"),
    (("weights_from", "examples"), "file", "examples"),
    (("weights_from", "keep"), "file", "keep"),
    (("models", "*", "examples"), "file", "examples"),
)


def values_at(data: Any, pattern: KeyPath, where: KeyPath = ()):
    """``(container, key, key path)`` of every value of ``data`` that ``pattern`` names, ``"*"``
    standing for each item of a list (absent keys and values of other shapes are skipped)."""
    if not pattern:
        return
    head, rest = pattern[0], pattern[1:]
    if head == "*":
        keys = range(len(data)) if isinstance(data, list) else ()
    else:
        keys = (head,) if isinstance(data, dict) and head in data else ()
    for key in keys:
        if rest:
            yield from values_at(data[key], rest, where + (key,))
        else:
            yield data, key, where + (key,)


# ---------------------------------------------------------------------------------------------
# checks


class Problems:
    """The problems found so far, each placed at its key path and line."""

    def __init__(self, source: str, lines: dict):
        self.source = source
        self.lines = lines
        self.messages: list[str] = []

    def add(self, path: KeyPath, message: str, at: Optional[KeyPath] = None) -> None:
        """Record ``message`` about ``path``, at the line of ``at`` (default: ``path``, else its nearest parent)."""
        line = None
        anchor = path if at is None else at
        for depth in range(len(anchor), 0, -1):  # a missing key: the line of its nearest parent
            if anchor[:depth] in self.lines:
                line = self.lines[anchor[:depth]]
                break
        if line == SET:
            where = f"{self.source}: {key_path(path)} (from --set)"
        elif line is not None:
            where = f"{self.source}:{line}: {key_path(path)}"
        else:
            where = f"{self.source}: {key_path(path)}"
        self.messages.append(f"{where}: {message}")

    def raise_any(self) -> None:
        if self.messages:
            raise RecipeError(self.messages)


def _describe(value: Any) -> str:
    kind = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{shown} ({kind})" if not isinstance(value, (list, dict)) and value is not None else kind


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


Check = Callable[[Any, KeyPath, Problems], None]


def _expect(test: Callable[[Any], bool], wanted: str, nullable: bool = False) -> Check:
    def check(value, path, problems):
        if value is None and nullable:
            return
        if not test(value):
            problems.add(path, f"expected {wanted}, got {_describe(value)}")
    return check


def _choice(choices, nullable: bool = False) -> Check:
    def check(value, path, problems):
        if value is None and nullable:
            return
        if value not in choices:
            hint = did_you_mean(value, choices) if isinstance(value, str) else ""
            problems.add(path, f"{hint}expected one of {', '.join(choices)}" + (" or null" if nullable else "")
                         + f", got {_describe(value)}")
    return check


def _mapping_keys(value: dict, path: KeyPath, allowed, problems: Problems) -> None:
    """Every key of ``value`` is one of ``allowed``: one unknown key is a problem of its own (with a
    did-you-mean); several are one problem that lists them and the allowed keys once."""
    unknown = []
    for key in value:
        if not isinstance(key, str):
            problems.add(path + (key,), f"keys must be strings, got {_describe(key)}")
        elif key not in allowed:
            unknown.append(key)
    if len(unknown) == 1:
        problems.add(path + (unknown[0],), f"unknown key; {did_you_mean(unknown[0], allowed)}"
                                           f"expected one of {', '.join(allowed)}")
    elif unknown:
        hints = {key: did_you_mean(key, allowed).strip() for key in unknown}
        named = [f"{quoted(key)} ({hints[key]})" for key in unknown if hints[key]]  # typos first
        named += [quoted(key) for key in unknown if not hints[key]]
        problems.add(path, f"{len(unknown)} unknown keys: {few_names(named)}; expected keys among "
                           f"{', '.join(allowed)}", at=path + (unknown[0],))


def _check_regex(value: Any, path: KeyPath, problems: Problems) -> None:
    if not isinstance(value, str):
        problems.add(path, f"expected a regular expression (a string), got {_describe(value)}")
        return
    try:
        compile_pattern(value)
    except InputError as exc:
        problems.add(path, f"not a valid regular expression ({exc})")


def check_tensor_value(value: Any, path: KeyPath, problems: Problems, scalar: Callable[[Any], bool] = is_number,
                       scalar_name: str = "a number") -> None:
    """A number for every tensor, a list of numbers (a gradient over layers), or a list of
    ``{filter: regex, value: number or list of numbers}`` mappings (per-tensor values, first match
    wins; an entry without filter is the default). Which tensors they reach is checked by the runner."""
    wanted = f"{scalar_name}, a list of numbers or a list of {{filter, value}} mappings"
    if scalar(value):
        return
    if not isinstance(value, list) or not value:
        problems.add(path, f"expected {wanted}, got {_describe(value)}")
        return
    if _numbers(value):
        return
    if all(isinstance(v, dict) for v in value):
        for i, item in enumerate(value):
            _mapping_keys(item, path + (i,), ("filter", "value"), problems)
            if "value" not in item:
                problems.add(path + (i,), "missing key 'value'")
            elif not (scalar(item["value"]) or _numbers(item["value"])):
                problems.add(path + (i, "value"), f"expected {scalar_name} or a list of numbers, "
                                                  f"got {_describe(item['value'])}")
            if "filter" in item:
                _check_regex(item["filter"], path + (i, "filter"), problems)
        return
    problems.add(path, f"expected {wanted}, got a list that mixes kinds")


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(is_number(v) for v in value)


def _parameter_value(value: Any) -> bool:
    return is_number(value) or isinstance(value, (bool, str))


def _positive(value: Any) -> bool:
    return is_number(value) and value > 0


def _positive_int(value: Any) -> bool:
    return is_int(value) and value > 0


def _nonnegative_int(value: Any) -> bool:
    return is_int(value) and value >= 0


def _shard_size(value, path, problems):
    try:
        parse_size(value)
    except InputError as exc:
        problems.add(path, str(exc))


def _memory_caps(value, path, problems):
    try:
        parse_memory_caps(value)
    except InputError as exc:
        problems.add(path, str(exc))


#: The check of each key of ``weights_from`` (few-shot weights from examples): one per field of
#: ``FewShotOptions``, which checks them again, with the examples themselves, when it runs.
WEIGHTS_FROM_CHECKS: dict[str, Check] = {
    "score_dtype": _choice(SCORE_DTYPES, nullable=True),
    "device_map": _choice(DEVICE_MAPS, nullable=True),
    "max_memory": _memory_caps,
    "offload_folder": _expect(lambda v: isinstance(v, str) and v.strip() != "", "a folder path", nullable=True),
    "examples": _expect(lambda v: (isinstance(v, str) and v.strip() != "") or
                        (isinstance(v, list) and bool(v) and all(isinstance(e, dict) for e in v)),
                        "a path to a .jsonl file (or a list of examples)"),
    "temperature": _expect(_positive, "a positive number"),
    "query_instruction": _expect(lambda v: isinstance(v, str), "a string", nullable=True),
    "neg_number": _expect(_nonnegative_int, "a non-negative integer"),
    "batch_size": _expect(_positive_int, "a positive integer"),
    "max_length": _expect(lambda v: is_int(v) and v >= 2, "an integer of at least 2", nullable=True),
    "task": _expect(lambda v: isinstance(v, (str, list)), "a task name or a list of them", nullable=True),
    "seed": _expect(_nonnegative_int, "a non-negative integer", nullable=True),
    "device": _expect(lambda v: isinstance(v, str), "a device name (cpu, cuda, cuda:1)", nullable=True),
    "search": _expect(lambda v: isinstance(v, bool), "true or false"),
    "search_budget": _expect(_positive_int, "a positive integer"),
    "holdout": _expect(lambda v: is_number(v) and v >= 0, "a fraction below 1 or a count of examples",
                       nullable=True),
    "keep": _expect(lambda v: (isinstance(v, str) and v.strip() != "") or
                    (isinstance(v, list) and bool(v) and all(isinstance(e, dict) for e in v)),
                    "a path to a file of examples to keep (or a list of examples)", nullable=True),
    "keep_tolerance": _expect(lambda v: is_number(v) and v >= 0, "a non-negative number (loss units)",
                              nullable=True),
    "keep_weight": _expect(lambda v: is_number(v) and v >= 0, "a non-negative number", nullable=True),
    "search_space": _expect(lambda v: isinstance(v, str) and (v == "models" or bool(LAYER_SPACE.fullmatch(v))
                                                              and int(v.split(":")[1]) >= 1),
                            "'models' or 'layers:K' (K layer groups, e.g. layers:3)"),
}
if tuple(WEIGHTS_FROM_CHECKS) != WEIGHTS_FROM_KEYS:
    raise ImportError("recipe schema: weights_from checks do not match FewShotOptions' fields")


#: The keys of a model entry (``models[i]``): the fields of ``ModelEntry``.
MODEL_KEYS = ("path", "weight", "base", "parameters", "examples")


def _top_level_checks() -> dict[str, Check]:
    """The check of each top-level key but ``models`` (checked by ``_check_models``)."""
    path_or_null = _expect(lambda v: isinstance(v, str) and v.strip() != "", "a path", nullable=True)
    return {
        "output": path_or_null,
        "model_type": _choice(MODEL_TYPES, nullable=True),
        "merge_method": _expect(lambda v: isinstance(v, str), "the name of a merge method"),
        "base_model": path_or_null,
        "weights_from": _expect(lambda v: isinstance(v, dict), "a mapping (examples, temperature, ...)",
                                nullable=True),
        "parameters": _expect(lambda v: isinstance(v, dict), "a mapping of parameter names to values",
                              nullable=True),
        "dtype": _choice(DTYPES, nullable=True),
        "normalize": _expect(lambda v: isinstance(v, bool), "true or false"),
        "max_shard_size": _shard_size,
        "config_from": path_or_null,
        "seed": _expect(_nonnegative_int, "a non-negative integer"),
        "trust_remote_code": _expect(lambda v: isinstance(v, bool), "true or false"),
        "allow_nonfinite": _expect(lambda v: isinstance(v, bool), "true or false"),
        "provenance": _expect(lambda v: isinstance(v, dict), "a mapping", nullable=True),
    }


#: Every top-level key of a recipe, in the order a recipe is written: the fields of ``Recipe``.
TOP_LEVEL_KEYS = ("models", *_top_level_checks())


def local_path(value: str, base_dir: Union[str, os.PathLike]) -> Path:
    """Where ``value`` (from a recipe in ``base_dir``) lies: relative paths join the recipe's folder."""
    path = Path(value).expanduser()
    return Path(os.path.abspath(path if path.is_absolute() else Path(base_dir) / path))


def resolve_model_path(value: str, base_dir: Union[str, os.PathLike]) -> str:
    """A model path made absolute against ``base_dir``; a hub id (not a local path) stays as it is."""
    local = local_path(value, base_dir)
    if not local.exists() and looks_like_hub_id(value):
        return value
    return str(local)


def _check_model_path(value: Any, path: KeyPath, base_dir, problems: Problems) -> None:
    if not isinstance(value, str) or not value.strip():
        problems.add(path, f"expected a path to a model (a folder, a .safetensors file or a hub id), "
                           f"got {_describe(value)}")
        return
    local = local_path(value, base_dir)
    if not local.exists() and not looks_like_hub_id(value):
        problems.add(path, f"model not found: {value} (no such file or folder: {local})")


def check(data: Any, lines: dict, base_dir: Union[str, os.PathLike], source: str) -> None:
    """Check recipe ``data`` (read from ``source`` in ``base_dir``); raise one RecipeError listing every problem."""
    problems = Problems(source, lines)
    if not isinstance(data, dict):
        problems.add((), "a recipe is a mapping of keys (models, merge_method, output, ...), got "
                         + _describe(data))
        problems.raise_any()
    unknown = [key for key in data if key not in TOP_LEVEL_KEYS]
    if "models" not in data and len(unknown) > len(data) - len(unknown):  # a config.json, an examples file, ...
        problems.add((), f"not a cocktail recipe: it has no models: and {len(unknown)} keys a recipe does not have "
                         f"({few_names(quoted(k) for k in unknown)}); a recipe lists models: (and merge_method, "
                         "output, ...; see 'Recipes' in the README)", at=(unknown[0],))
        problems.raise_any()
    checks = _top_level_checks()
    _mapping_keys(data, (), TOP_LEVEL_KEYS, problems)
    for key, value in data.items():
        if key in checks:
            checks[key](value, (key,), problems)

    method = _registered_method(data.get("merge_method", "linear"))
    _check_models(data, base_dir, problems, list(MODEL_KEYS), uses_weights=method is None or method.uses_weights,
                  data_aware=method is not None and method.statistics is not None)
    for key in MODEL_PATH_KEYS:
        value = data.get(key[0])
        if isinstance(value, str) and value.strip():
            _check_model_path(value, key, base_dir, problems)
    weights_from = data.get("weights_from")
    if isinstance(weights_from, dict):
        _check_weights_from(weights_from, data, base_dir, problems)
    if isinstance(data.get("merge_method", "linear"), str):
        _check_method(data, problems)
    problems.raise_any()


def check_remote_code(data: dict, lines: dict, source: str, allowed: bool) -> None:
    """A recipe is data a user downloads (or finds in a merged folder): it cannot turn on a model
    folder's own code. ``trust_remote_code: true`` is refused unless the user ``allowed`` it."""
    if data.get("trust_remote_code") is True and not allowed:
        problems = Problems(source, lines)
        problems.add(("trust_remote_code",), "a recipe cannot turn on a model folder's own code; pass "
                                             "--trust-remote-code on the command line (trust_remote_code=True "
                                             "from Python) if you trust these models' code")
        problems.raise_any()


def _registered_method(name: Any):
    """The registered method called ``name``, or ``None``."""
    return METHODS.get(name) if isinstance(name, str) else None


def _check_models(data: dict, base_dir, problems: Problems, model_keys: list[str], uses_weights: bool,
                  data_aware: bool = False) -> None:
    models = data.get("models")
    if "models" not in data:
        problems.add(("models",), "missing: list the models to merge (each with a path)")
        return
    if not isinstance(models, list) or not models:
        problems.add(("models",), f"expected a list of models (each a mapping with a path), got {_describe(models)}")
        return
    given = []
    for i, entry in enumerate(models):
        path = ("models", i)
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict):
            problems.add(path, f"expected a mapping with a path (and a weight), got {_describe(entry)}")
            continue
        _mapping_keys(entry, path, model_keys, problems)
        if "path" not in entry:
            problems.add(path + ("path",), "missing: the model's folder, .safetensors file or hub id")
        else:
            _check_model_path(entry["path"], path + ("path",), base_dir, problems)
        if entry.get("weight") is not None:
            check_tensor_value(entry["weight"], path + ("weight",), problems)
            given.append(i)
        if entry.get("base") is not None:  # the model a LoRA adapter applies to
            _check_model_path(entry["base"], path + ("base",), base_dir, problems)
        if entry.get("examples") is not None:  # the examples of this model's statistics (RegMean, Fisher)
            if not data_aware:
                problems.add(path + ("examples",), "examples per model feed the statistics of a data-aware merge "
                                                   "(merge_method regmean or fisher); use weights_from.examples "
                                                   "for weights from examples")
            _check_examples_file(entry["examples"], path + ("examples",), base_dir, problems)
        if entry.get("parameters") is not None:  # this model's own values of per-model method parameters
            own = entry["parameters"]
            if not isinstance(own, dict):
                problems.add(path + ("parameters",), f"expected a mapping of parameter names to values, "
                                                     f"got {_describe(own)}")
                continue
            method = _registered_method(data.get("merge_method", "linear"))
            for key, value in own.items():
                if method is not None and key not in method.per_model:
                    takes = (f"it takes {', '.join(method.per_model)} per model" if method.per_model
                             else "it takes none per model")
                    problems.add(path + ("parameters", key), f"not a per-model parameter of {method.name}; {takes}")
                else:
                    check_tensor_value(value, path + ("parameters", key), problems)
    if given and data.get("weights_from") and not data_aware:  # data-aware: examples feed statistics, not weights
        for i in given:
            problems.add(("models", i, "weight"), "weights are given both here and by weights_from; "
                                                  "remove one (fixed weights, or weights from examples)")
    elif given and len(given) != len(models) and uses_weights:
        missing = [i for i in range(len(models)) if i not in given]
        for i in missing:
            problems.add(("models", i, "weight"), "missing: give a weight to every model, or to none "
                                                  "(equal weights)")


def _check_weights_from(weights_from: dict, data: dict, base_dir, problems: Problems) -> None:
    path = ("weights_from",)
    _mapping_keys(weights_from, path, WEIGHTS_FROM_KEYS, problems)
    for key, value in weights_from.items():
        if key in WEIGHTS_FROM_CHECKS:
            WEIGHTS_FROM_CHECKS[key](value, path + (key,), problems)
    models = data.get("models") if isinstance(data.get("models"), list) else []
    own = bool(models) and all(isinstance(m, dict) and m.get("examples") is not None for m in models)
    if "examples" not in weights_from:
        if not own:  # a data-aware merge whose every model has its own examples needs none here
            problems.add(path + ("examples",), "missing: the .jsonl file of examples to weigh the models on")
    else:
        _check_examples_file(weights_from.get("examples"), path + ("examples",), base_dir, problems)
    _check_examples_file(weights_from.get("keep"), path + ("keep",), base_dir, problems, "keep")


def _check_examples_file(value, path: tuple, base_dir, problems: Problems, what: str = "examples") -> None:
    """A file of examples named in a recipe exists (a list of examples is checked when it is read)."""
    if isinstance(value, str) and value.strip():
        local = local_path(value, base_dir)
        if not local.is_file():
            problems.add(path, f"{what} file not found: {value} (no such file: {local})")
    elif value is not None and not isinstance(value, list):
        problems.add(path, f"expected a path to a .jsonl file of examples (or a list of examples), got "
                           f"{_describe(value)}")


def _check_method(data: dict, problems: Problems) -> None:
    name = data.get("merge_method", "linear")
    method = METHODS.get(name)
    if method is None:
        problems.add(("merge_method",), f"unknown merge method {name!r}; {did_you_mean(name, METHODS)}"
                                        f"choose from {', '.join(sorted(METHODS))}")
        return
    if method.needs_base and not data.get("base_model"):
        problems.add(("base_model",), f"merge method {name} needs a base model: set base_model",
                     at=("base_model",) if "base_model" in data else ("merge_method",))
    if not method.uses_weights and isinstance(data.get("models"), list):
        for i, entry in enumerate(data["models"]):
            if isinstance(entry, dict) and entry.get("weight") is not None:
                problems.add(("models", i, "weight"), f"merge method {name} takes no weights; remove it")
    parameters = data.get("parameters")
    if not isinstance(parameters, dict):
        return
    accepted = set(method.defaults)  # a method's defaults name every parameter it takes
    for key, value in parameters.items():
        where = ("parameters", key)
        if key not in accepted:
            choices = f"it takes {', '.join(sorted(accepted))}" if accepted else "it takes no parameters"
            problems.add(where, f"unknown parameter of {name}; {did_you_mean(key, accepted)}{choices}")
        else:
            check_tensor_value(value, where, problems, scalar=_parameter_value,
                               scalar_name="a number, true/false or a string")


def resolve_paths(data: dict, base_dir: Union[str, os.PathLike]) -> dict:
    """A copy of checked recipe ``data`` with every local path made absolute against ``base_dir``."""
    data = {key: value for key, value in data.items() if not (key == "parameters" and value is None)}
    data["models"] = [{"path": entry} if isinstance(entry, str) else dict(entry) for entry in data.get("models") or []]
    if isinstance(data.get("weights_from"), dict):
        data["weights_from"] = dict(data["weights_from"])
    for pattern, kind, _ in READ_PATH_KEYS:
        for container, key, _ in list(values_at(data, pattern)):
            value = container[key]
            if isinstance(value, str) and value:
                container[key] = resolve_model_path(value, base_dir) if kind == "model" else str(local_path(value, base_dir))
    if data.get("output"):
        data["output"] = str(local_path(data["output"], base_dir))
    offload = data["weights_from"].get("offload_folder") if isinstance(data.get("weights_from"), dict) else None
    if isinstance(offload, str) and offload:  # a folder written to, not read: not among READ_PATH_KEYS
        data["weights_from"]["offload_folder"] = str(local_path(offload, base_dir))
    return data
