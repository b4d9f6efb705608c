"""cocktail: merge fine-tuned transformer checkpoints into one model, the LM-Cocktail way.

Importing ``cocktail`` is light: torch and transformers load only when a function that needs them
is first used (``cocktail --help`` stays fast).
"""

from importlib import import_module

from cocktail.errors import (
    CocktailError,
    CocktailWarning,
    IncompatibleModelsError,
    InputChangedError,
    InputError,
    OutputError,
    RecipeError,
)
from cocktail.version import __version__

_LAZY = {
    "merge": "cocktail.api",
    "merge_state_dicts": "cocktail.api",
    "CocktailCallback": "cocktail.callback",
    "mix_models": "cocktail.api",
    "mix_models_by_layers": "cocktail.api",
    "load_model": "cocktail.api",
    "mix_models_with_data": "cocktail.api",
    "weights_from_examples": "cocktail.fewshot.weighting",
    "few_shot_losses": "cocktail.fewshot.weighting",
    "FewShotResult": "cocktail.fewshot.weighting",
    "load_examples": "cocktail.fewshot.examples",
    "run": "cocktail.runner",
    "MergeResult": "cocktail.runner",
    "Recipe": "cocktail.recipe.recipe",
    "ModelEntry": "cocktail.recipe.recipe",
    "Checkpoint": "cocktail.io.checkpoints",
    "METHODS": "cocktail.merging.methods",
    "evaluate_models": "cocktail.evaluation.evaluate",
    "sweep_weights": "cocktail.evaluation.sweep",
}

__all__ = ["CocktailError", "IncompatibleModelsError", "InputError", "OutputError", "RecipeError", "InputChangedError",
           "CocktailWarning", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cocktail' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
