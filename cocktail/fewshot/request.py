"""A recipe's ``weights_from`` on the way through the runner: checked before any model is opened,
computed once the plan is known, recorded in the output's provenance. For a data-aware method
(RegMean, Fisher) its examples feed each model's statistics instead (:class:`StatisticsRequest`)."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from cocktail.errors import InputError, option
from cocktail.fewshot.examples import load_examples
from cocktail.fewshot.statistics import statistics_for_plan
from cocktail.fewshot.weighting import FewShotResult, weights_for_plan
from cocktail.recipe.weights_from import FewShotOptions


class FewShotRequest:
    """A recipe's ``weights_from``, checked (options and examples) before any model is opened.

    ``run(plan)`` computes the weights; ``result`` then holds the losses and details that go into the
    output's provenance.
    """

    def __init__(self, recipe, method=None):
        if recipe.weights is not None:
            raise InputError("give either fixed weights or examples to compute them from, not both")
        if method is not None and not method.uses_weights:
            raise InputError(f"merge method {method.name} does not use weights, so there is nothing to "
                             "compute from examples")
        self.model_type = recipe.model_type
        self.trust_remote_code = bool(recipe.trust_remote_code)
        self.method = method
        self.parameters = dict(recipe.parameters or {})
        self.options = FewShotOptions.from_dict(dict(recipe.weights_from), default_seed=int(recipe.seed or 0))
        self.examples = load_examples(self.options.examples, recipe.model_type, self.options.task)
        self.keep = load_examples(self.options.keep, recipe.model_type) if self.options.keep is not None else None
        # a temporary offload folder (device map, weights on disk) goes beside the output, on its disk
        self.offload_beside = Path(recipe.output).expanduser().absolute().parent if recipe.output else None
        self.result: Optional[FewShotResult] = None

    def run(self, plan, progress: bool = False, statistics=None) -> tuple[list[float], list[str]]:
        """``(weights, warnings)`` for the checkpoints of ``plan`` (a data-aware method's search merges
        with ``statistics``)."""
        self.result = weights_for_plan(plan, self.model_type, self.options, method=self.method,
                                       parameters=self.parameters, progress=progress, example_set=self.examples,
                                       keep_set=self.keep, trust_remote_code=self.trust_remote_code,
                                       statistics=statistics, offload_beside=self.offload_beside)
        return list(self.result.weights), list(self.result.notes)

    def provenance(self) -> Optional[dict]:
        """What was computed, for ``provenance.weights_from`` of the written recipe."""
        if self.result is None:
            return None
        data = self.result.to_dict()
        if data.get("search"):  # every evaluated merge is in --json; the recipe keeps the answer
            data["search"].pop("points", None)
        for key, label in (("examples", "examples_source"), ("keep", "keep_source")):
            source = getattr(self.options, key)
            if isinstance(source, (str, os.PathLike)):
                data[label] = str(Path(source).expanduser().absolute())
        data["options"] = {k: v for k, v in asdict(self.options).items() if k not in ("examples", "keep")}
        return data


class StatisticsRequest:
    """A data-aware merge's examples (RegMean's Gram matrices, Fisher's diagonal Fisher), checked
    before any model is opened: which examples feed each model's statistics.

    By default every model's statistics come from the target examples (``examples``), and the
    ``keep`` examples feed the base model's (the recipe's ``base_model`` when it is one of the merged
    models): each layer then keeps the fine-tune's behaviour where the target lives and the base's
    where general skill lives. A model with examples of its own in the recipe (``models[i].examples``:
    several fine-tunes, each on its task) uses those. ``run(plan)`` computes the statistics, or finds
    them in the cache.
    """

    def __init__(self, recipe, method):
        self.kind = method.statistics
        self.method = method
        own = [entry.examples for entry in recipe.models]
        given = dict(recipe.weights_from or {})
        if given.get("examples") is None:
            if not all(e is not None for e in own):
                missing = [entry.path for entry in recipe.models if entry.examples is None]
                raise InputError(f"merge method {method.name} fits each tensor to the models' statistics on examples: "
                                 f"give {option('examples')} (the target examples; {option('keep')} for the base "
                                 f"model){'' if len(missing) == len(own) else ' or examples for ' + ', '.join(missing)}")
            given["examples"] = own[0]  # every model has its own: the options only need one to check
        self.model_type = recipe.model_type
        self.trust_remote_code = bool(recipe.trust_remote_code)
        self.options = FewShotOptions.from_dict(given, default_seed=int(recipe.seed or 0))
        self.sets: dict = {}
        if recipe.weights_from and recipe.weights_from.get("examples") is not None and not all(e is not None for e in own):
            self.sets["target"] = load_examples(self.options.examples, recipe.model_type, self.options.task)
        keep = load_examples(self.options.keep, recipe.model_type) if self.options.keep is not None else None
        base = [i for i, entry in enumerate(recipe.models) if same_model(entry.path, recipe.base_model)]
        if keep is not None:
            if not base:
                where = (f"the base model {recipe.base_model} is not one of the merged models" if recipe.base_model
                         else f"no {option('base')} is given")
                raise InputError(f"{option('keep')} feeds the base model's statistics in a {method.name} merge, but "
                                 f"{where}: merge the base too ({option('models')} ./ft ./base {option('base')} ./base)")
            if all(own[i] is not None for i in base):
                raise InputError(f"{option('keep')} feeds the base model's statistics, but the base model has "
                                 f"examples of its own in the recipe: give one or the other")
            self.sets["keep"] = keep
        self.sources = []
        for i, examples in enumerate(own):
            if examples is not None:
                name = f"models[{i}]"
                self.sets[name] = load_examples(examples, recipe.model_type, self.options.task)
            else:
                name = "keep" if i in base and keep is not None else "target"
            self.sources.append(name)
        self.set: Optional[object] = None

    def run(self, plan, progress: bool = False):
        """The :class:`~cocktail.io.statistics_cache.StatisticsSet` of the plan's checkpoints."""
        self.set = statistics_for_plan(plan, self.model_type, self.kind, self.options, self.sources, self.sets,
                                       progress=progress, trust_remote_code=self.trust_remote_code)
        return self.set

    def provenance(self) -> Optional[dict]:
        """What the statistics were computed from, for ``provenance.statistics`` of the written recipe."""
        return None if self.set is None else self.set.provenance


def same_model(path, base) -> bool:
    """Whether a model entry's ``path`` names the base model ``base`` (the same folder, or the same name)."""
    if base is None or path is None:
        return False
    if not isinstance(path, (str, os.PathLike)) or not isinstance(base, (str, os.PathLike)):
        return path is base
    a, b = Path(path).expanduser(), Path(base).expanduser()
    if a.exists() and b.exists():
        return os.path.realpath(a) == os.path.realpath(b)
    return os.fspath(path) == os.fspath(base)
