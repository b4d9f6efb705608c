"""A recipe's ``weights_from``: the options of LM-Cocktail's few-shot weights, as one dataclass.

:class:`FewShotOptions` is the one owner of these keys: the recipe schema, the CLI options and the
few-shot code all take them from its fields. Light (no torch), like the CLI that uses it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any, Optional, Union

from cocktail.errors import InputError, option
from cocktail.recipe.scoring import ScoringOptions

DEFAULT_SEARCH_BUDGET = 30
DEFAULT_KEEP_TOLERANCE = 0.05  # the keep loss may rise this much above the best input's (loss units)
SEARCH_SPACES = ("models", "layers:K")  # one weight per model; or per model and group of K layer groups
LAYER_SPACE = re.compile(r"layers:(\d+)")


@dataclass
class FewShotOptions(ScoringOptions):
    """Everything that defines the few-shot loss and weights (the keys of a recipe's ``weights_from``):
    how the models are run (:class:`ScoringOptions`: ``score_dtype``, ``device_map``, ...), then the rest."""

    examples: Any = None  # a path, or a list of example dicts
    temperature: float = 5.0
    query_instruction: Optional[str] = None
    neg_number: int = 7
    batch_size: int = 2
    max_length: Optional[int] = None  # None: 512 for encoders and rerankers, 2048 for decoders
    task: Union[str, list, None] = None
    seed: Optional[int] = None  # None: the recipe's seed (0)
    device: Optional[str] = None  # None: cuda when present, else cpu
    search: bool = False
    search_budget: int = DEFAULT_SEARCH_BUDGET
    holdout: Optional[float] = None  # None: a fifth with --search when there are >= 10 examples; <1 fraction, >=1 count
    keep: Any = None  # examples of what the merge must keep (a path, or a list of example dicts)
    keep_tolerance: Optional[float] = None  # None: DEFAULT_KEEP_TOLERANCE (unless keep_weight is given)
    keep_weight: Optional[float] = None  # the search minimises loss + keep_weight * keep loss instead
    search_space: str = "models"  # or "layers:K": K contiguous layer groups, each with its own weights

    @classmethod
    def from_dict(cls, data: dict, default_seed: int = 0) -> "FewShotOptions":
        """Options from a recipe's ``weights_from`` mapping, every key and type checked."""
        if not isinstance(data, dict):
            raise InputError(f"weights_from must be a mapping with at least 'examples', got {type(data).__name__}")
        unknown = [k for k in data if k not in KEYS]
        if unknown:
            raise InputError(f"weights_from: unknown key {unknown[0]!r} (known: {', '.join(sorted(KEYS))})")
        options = cls(**data)
        if options.seed is None:
            options.seed = default_seed
        options.check()
        return options

    def check(self) -> None:
        """Cheap checks of every option (the examples file is read by the few-shot code)."""
        if self.examples is None:
            raise InputError("weights_from: 'examples' is required (a file of examples)")
        super().check()

        def number(name, kind, low, strict=False):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
                raise InputError(f"{name.replace('_', '-')} must be {'a number' if kind is float else 'an integer'}, got {value!r}")
            if not math.isfinite(value) or (value <= low if strict else value < low):
                raise InputError(f"{name.replace('_', '-')} must be {'more than' if strict else 'at least'} {low}, got {value!r}")

        number("temperature", float, 0, strict=True)
        number("neg_number", int, 0)
        number("batch_size", int, 1)
        number("search_budget", int, 1)
        if self.seed is not None:
            number("seed", int, 0)
        if self.max_length is not None:
            number("max_length", int, 2)
        if self.holdout is not None:
            number("holdout", float, 0)
            if self.holdout >= 1 and self.holdout != int(self.holdout):
                raise InputError(f"holdout must be a fraction below 1 or a whole number of examples, got {self.holdout}")
        if self.query_instruction is not None and not isinstance(self.query_instruction, str):
            raise InputError(f"query-instruction must be a string, got {self.query_instruction!r}")
        if not isinstance(self.search, bool):
            raise InputError(f"search must be true or false, got {self.search!r}")
        if self.keep_tolerance is not None:
            number("keep_tolerance", float, 0)
        if self.keep_weight is not None:
            number("keep_weight", float, 0)
        if self.keep is None and (self.keep_tolerance is not None or self.keep_weight is not None):
            name = "keep_tolerance" if self.keep_tolerance is not None else "keep_weight"
            raise InputError(f"{option(name)} needs {option('keep')} (the examples the merge must keep)")
        if self.keep_tolerance is not None and self.keep_weight is not None:
            raise InputError(f"give {option('keep_tolerance')} or {option('keep_weight')}, not both")
        self.layer_groups()
        if self.search_space != "models" and not self.search:
            raise InputError(f"{option('search_space')} {self.search_space} needs {option('search')}")

    @property
    def scoring(self) -> ScoringOptions:
        """How the models are run, on its own (for the scorers)."""
        return ScoringOptions(self.score_dtype, self.device_map, self.max_memory, self.offload_folder)

    def layer_groups(self) -> Optional[int]:
        """K of ``search_space: layers:K`` (``None`` for ``models``); a bad value is refused."""
        if self.search_space == "models":
            return None
        match = LAYER_SPACE.fullmatch(self.search_space) if isinstance(self.search_space, str) else None
        if match is None or int(match.group(1)) < 1:
            raise InputError(f"{option('search_space')} must be 'models' or 'layers:K' with K a whole number of "
                             f"at least 1 (e.g. layers:3), got {self.search_space!r}")
        return int(match.group(1))

    @property
    def tolerance(self) -> Optional[float]:
        """How far the keep loss may rise above the best input's (``None``: a trade-off weight instead)."""
        if self.keep is None or self.keep_weight is not None:
            return None
        return DEFAULT_KEEP_TOLERANCE if self.keep_tolerance is None else float(self.keep_tolerance)


#: The keys of ``weights_from``, in the order of the dataclass.
KEYS = tuple(f.name for f in fields(FewShotOptions))
