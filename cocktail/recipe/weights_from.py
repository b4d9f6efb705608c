"""A recipe's ``weights_from``: the options of LM-Cocktail's few-shot weights, as one dataclass.

:class:`FewShotOptions` is the one owner of these keys: the recipe schema, the CLI options and the
few-shot code all take them from its fields. Light (no torch), like the CLI that uses it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Optional, Union

from cocktail.errors import InputError

DEFAULT_SEARCH_BUDGET = 30


@dataclass
class FewShotOptions:
    """Everything that defines the few-shot loss and weights (the keys of a recipe's ``weights_from``)."""

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


#: The keys of ``weights_from``, in the order of the dataclass.
KEYS = tuple(f.name for f in fields(FewShotOptions))
