"""A recipe's ``weights_from`` on the way through the runner: checked before any model is opened,
computed once the plan is known, recorded in the output's provenance."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from cocktail.errors import InputError
from cocktail.fewshot.examples import load_examples
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

    def run(self, plan, progress: bool = False) -> tuple[list[float], list[str]]:
        """``(weights, warnings)`` for the checkpoints of ``plan``."""
        self.result = weights_for_plan(plan, self.model_type, self.options, method=self.method,
                                       parameters=self.parameters, progress=progress, example_set=self.examples,
                                       keep_set=self.keep, trust_remote_code=self.trust_remote_code,
                                       offload_beside=self.offload_beside)
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
