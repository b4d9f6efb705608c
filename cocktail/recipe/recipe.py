"""The ``Recipe``: everything a merge needs, as one value.

The CLI, the Python API and YAML recipe files all build a ``Recipe`` and hand it to
``cocktail.runner.run``. A recipe is plain data: it round-trips through ``to_dict``/``from_dict`` and
through YAML (``from_yaml``/``to_yaml``); its keys and their checks live in ``schema.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from cocktail.errors import InputError, RecipeError
from cocktail.io.provenance import RECIPE_FILE, dump_yaml
from cocktail.recipe import mergekit_config, schema
from cocktail.recipe.yaml_lines import apply_override, parse_yaml


def recipe_path(path: Union[str, os.PathLike]) -> Path:
    """The recipe file ``path`` names: the file itself, or a merged folder's ``cocktail_recipe.yaml``."""
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / RECIPE_FILE).is_file():
            raise RecipeError(f"{path} is a folder without a {RECIPE_FILE}: give a recipe file, or a folder "
                              f"cocktail merged into (it holds the recipe it was made with)")
        return path / RECIPE_FILE
    return path


@dataclass
class ModelEntry:
    path: str
    weight: Optional[float | list] = None  # a number, or a per-tensor schedule (see merging/schedules.py)
    base: Optional[str] = None  # for a LoRA adapter folder: the model it applies to (default: its config's)
    parameters: Optional[dict] = None  # this model's own values of the method's per-model parameters (density...)
    examples: Any = None  # a data-aware merge: the examples of this model's statistics (a path or a list)

    def to_dict(self) -> dict:
        entry: dict[str, Any] = {"path": self.path}
        if self.weight is not None:
            entry["weight"] = self.weight
        if self.base is not None:
            entry["base"] = self.base
        if self.parameters:
            entry["parameters"] = dict(self.parameters)
        if self.examples is not None:
            entry["examples"] = self.examples
        return entry


@dataclass
class Recipe:
    models: list[ModelEntry]
    output: Optional[str] = None
    model_type: Optional[str] = None  # None: read off the models' config.json (encoder when none says)
    merge_method: str = "linear"
    base_model: Optional[str] = None
    weights_from: Optional[dict] = None
    parameters: dict = field(default_factory=dict)
    dtype: Optional[str] = None
    normalize: bool = False
    max_shard_size: str = "5GB"
    config_from: Optional[str] = None
    seed: int = 0
    trust_remote_code: bool = False  # let a model folder's own code run: set by the user, never by a recipe file
    allow_nonfinite: bool = False  # write an output holding NaN or inf (refused by default)
    provenance: Optional[dict] = None  # what a merge was made from (input sha256, versions): kept for --verify

    @classmethod
    def from_models(cls, paths, weights=None, adapter_bases=None, **options) -> "Recipe":
        """A recipe for ``paths`` with one weight each (``weights=None``: equal weights) and, for LoRA
        adapter folders, the base each applies to (``adapter_bases``: one per model, ``None`` for the rest)."""
        paths = [str(p) for p in paths]
        if weights is not None and len(weights) != len(paths):
            raise InputError(f"got {len(weights)} weights for {len(paths)} models: give one weight per model")
        weights = list(weights) if weights is not None else [None] * len(paths)
        bases = [None if b is None else str(b) for b in adapter_bases] if adapter_bases else [None] * len(paths)
        return cls(models=[ModelEntry(p, w, b) for p, w, b in zip(paths, weights, bases)], **options)

    @property
    def model_parameters(self) -> Optional[list]:
        """Each model's own method parameters (``None`` when no model has any)."""
        if not any(m.parameters for m in self.models):
            return None
        return [dict(m.parameters or {}) for m in self.models]

    @property
    def weights(self) -> Optional[list]:
        """The fixed weights, one per model, or ``None`` when none are given."""
        given = [m.weight for m in self.models]
        if all(w is None for w in given):
            return None
        if any(w is None for w in given):
            missing = [m.path for m in self.models if m.weight is None]
            raise InputError(f"weights are given for some models but not for {', '.join(missing)}")
        return given

    def read_paths(self) -> list[tuple[str, str | bytes]]:
        """``(what it is, path)`` of every file or folder this recipe has the run read, whatever key names
        it (models, adapter bases, base model, config_from, examples, keep set: ``schema.READ_PATH_KEYS``),
        as given: a hub id stays a name. Examples given as a list are not a path."""
        data = self.to_dict()
        return [(label, os.fspath(container[key])) for pattern, _, label in schema.READ_PATH_KEYS
                for container, key, _ in schema.values_at(data, pattern)
                if isinstance(container[key], (str, os.PathLike))]

    def to_dict(self) -> dict:
        data: dict[str, Any] = {
            "model_type": self.model_type,
            "merge_method": self.merge_method,
            "models": [m.to_dict() for m in self.models],
            "base_model": self.base_model,
            "weights_from": self.weights_from,
            "parameters": dict(self.parameters),
            "dtype": self.dtype,
            "normalize": self.normalize,
            "max_shard_size": self.max_shard_size,
            "config_from": self.config_from,
            "seed": self.seed,
            "output": self.output,
        }
        if self.trust_remote_code:
            data["trust_remote_code"] = True
        if self.allow_nonfinite:
            data["allow_nonfinite"] = True
        if self.provenance is not None:
            data["provenance"] = self.provenance
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        data = dict(data)
        models = [ModelEntry(**m) if isinstance(m, dict) else ModelEntry(str(m)) for m in data.pop("models")]
        return cls(models=models, **data)

    # -- YAML recipe files -------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: Union[str, os.PathLike], overrides: Iterable[str] = (),
                  trust_remote_code: bool = False) -> "Recipe":
        """Read and check the recipe file ``path`` (or a merged folder's ``cocktail_recipe.yaml``); relative
        paths in it are relative to its folder. A mergekit config is read as mergekit reads it
        (``mergekit_config.py``; its paths relative to the current folder).

        ``overrides`` are ``KEY.PATH=VALUE`` strings (``models.1.weight=0.3``), applied before the checks.
        A recipe cannot turn on a model folder's code: one that says ``trust_remote_code: true`` is
        refused unless ``trust_remote_code`` (the user's ``--trust-remote-code``) allows it, and with
        it the recipe runs trusted whatever it says.
        Raises :class:`~cocktail.errors.RecipeError` naming the key path and line of every problem.
        """
        path = recipe_path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RecipeError(f"recipe file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(f"{path}: cannot be read ({exc})") from None
        return cls.from_yaml_text(text, base_dir=path.absolute().parent, source=str(path), overrides=overrides,
                                  trust_remote_code=trust_remote_code)

    @classmethod
    def from_yaml_text(cls, text: str, base_dir: Union[str, os.PathLike] = ".", source: str = "<recipe>",
                       overrides: Iterable[str] = (), trust_remote_code: bool = False) -> "Recipe":
        """Like :meth:`from_yaml` for recipe text; relative paths are relative to ``base_dir``."""
        data, lines = parse_yaml(text, source)
        if mergekit_config.is_mergekit_config(data):  # read as mergekit reads it, then checked as a recipe
            data, lines = mergekit_config.recipe_data(data, source), {}
        for assignment in [overrides] if isinstance(overrides, str) else overrides:
            data = apply_override(data, lines, assignment, schema.TOP_LEVEL_KEYS)
        schema.check(data, lines, base_dir, source)
        schema.check_remote_code(data, lines, source, allowed=trust_remote_code)
        recipe = cls.from_dict(schema.resolve_paths(data, base_dir))
        recipe.trust_remote_code = bool(trust_remote_code)
        return recipe

    def check(self, base_dir: Union[str, os.PathLike] = ".") -> None:
        """Run the recipe file checks on this recipe (relative paths against ``base_dir``)."""
        schema.check(self.to_dict(), {}, base_dir, "recipe")

    def to_yaml(self) -> str:
        """The recipe as YAML; :meth:`from_yaml` reads it back to an equal Recipe."""
        return dump_yaml(self.to_dict())
