"""Per-tensor values: a weight or parameter that changes with the tensor it is applied to.

A value can be given three ways:

- a number: the same for every tensor;
- a list of numbers: a gradient over the layer index, interpolated linearly from the first layer
  (first number) to the last layer (last number); tensors outside the layers (embeddings, pooler)
  take the value at the first layer;
- a list of ``{filter: <regex>, value: <number or list of numbers>}`` entries: the first entry whose
  filter is found (``search``, by RE2: no input pattern can hang) in the tensor's name wins; an entry without ``filter`` is the
  default and must come last.

The layer of a tensor comes from its name: ``encoder.layer.3.``, ``layers.3.``, ``h.3.``, ``block.3.``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from cocktail.errors import InputError, quoted
from cocktail.io.patterns import compile_pattern

LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
ENTRY_KEYS = ("filter", "value")


def layer_index(name: str) -> Optional[int]:
    """The layer a tensor belongs to (``encoder.layer.3.attention...`` -> 3), or ``None``."""
    match = LAYER.search(name)
    return int(match.group(1)) if match else None


def layer_count(names: Iterable[str]) -> int:
    """Number of layers in a model with these tensor names (highest layer index + 1; 0 if none)."""
    indices = [i for i in map(layer_index, names) if i is not None]
    return max(indices) + 1 if indices else 0


def interpolate(values: Sequence[float], layer: Optional[int], layers: int) -> float:
    """The value of a gradient ``values`` at ``layer`` of ``layers`` (``None``: not a layer -> first value)."""
    if layer is None or len(values) == 1 or layers <= 1:
        return values[0]
    position = min(layer, layers - 1) / (layers - 1) * (len(values) - 1)
    low = math.floor(position)
    if low >= len(values) - 1:
        return values[-1]
    fraction = position - low
    return values[low] + fraction * (values[low + 1] - values[low])


@dataclass(frozen=True)
class TensorName:
    """What a schedule looks at: the tensor's names (as written, and without the model prefix) and layer."""

    name: str
    canonical: str
    layer: Optional[int]

    @classmethod
    def of(cls, name: str, canonical: Optional[str] = None) -> "TensorName":
        canonical = canonical or name
        return cls(name, canonical, layer_index(canonical))


@dataclass(frozen=True)
class Entry:
    key: str  # where it came from, e.g. models[0].weight[1]
    filter: Optional[str]
    pattern: Any  # compiled by RE2 (cocktail.io.patterns): search as in re
    values: tuple[float, ...]

    def matches(self, tensor: TensorName) -> bool:
        return self.pattern is None or bool(self.pattern.search(tensor.name) or self.pattern.search(tensor.canonical))


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(value: Any, key: str) -> tuple[float, ...]:
    """A number or a non-empty list of numbers, as a tuple of floats."""
    if is_number(value):
        values = (float(value),)
    elif isinstance(value, (list, tuple)) and value and all(is_number(v) for v in value):
        values = tuple(float(v) for v in value)
    else:
        raise InputError(f"{key} must be a number or a list of numbers, got {value!r}")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise InputError(f"{key} must be finite, got {bad[0]}")
    return values


class Schedule:
    """A parsed per-tensor value (see the module docstring). ``key`` names it in messages."""

    def __init__(self, key: str, entries: list[Entry]):
        self.key = key
        self.entries = entries

    @classmethod
    def parse(cls, spec: Any, key: str) -> "Schedule":
        """Parse ``spec`` (number, list of numbers, or list of filter entries); errors name ``key``."""
        if is_number(spec) or (isinstance(spec, (list, tuple)) and spec and all(is_number(v) for v in spec)):
            return cls(key, [Entry(key, None, None, _numbers(spec, key))])
        if not isinstance(spec, (list, tuple)) or not spec or not all(isinstance(e, dict) for e in spec):
            raise InputError(f"{key} must be a number, a list of numbers (a gradient over layers) or a list of "
                             f"{{filter, value}} entries, got {spec!r}")
        entries = []
        for i, raw in enumerate(spec):
            where = f"{key}[{i}]"
            unknown = sorted(set(raw) - set(ENTRY_KEYS))
            if unknown:
                raise InputError(f"{where} has unknown key {unknown[0]!r} (an entry has filter and value)")
            if "value" not in raw:
                raise InputError(f"{where} has no value")
            if entries and entries[-1].pattern is None:
                raise InputError(f"{where} comes after the default entry (the one without filter), "
                                 f"so it can never apply: put the default last")
            pattern_text = raw.get("filter")
            pattern = None
            if pattern_text is not None:
                if not isinstance(pattern_text, str):
                    raise InputError(f"{where}.filter must be a regular expression string, got {pattern_text!r}")
                try:
                    pattern = compile_pattern(pattern_text)
                except InputError as exc:
                    raise InputError(f"{where}.filter {quoted(pattern_text)} is not a valid regular expression: "
                                     f"{exc}") from None
            entries.append(Entry(where, pattern_text, pattern, _numbers(raw["value"], f"{where}.value")))
        return cls(key, entries)

    @property
    def is_constant(self) -> bool:
        """True when the value is one number for every tensor."""
        return len(self.entries) == 1 and self.entries[0].pattern is None and len(self.entries[0].values) == 1

    @property
    def filters(self) -> list[Entry]:
        return [e for e in self.entries if e.pattern is not None]

    def lookup(self, tensor: TensorName, layers: int) -> Optional[tuple[int, float]]:
        """``(entry index, value)`` for ``tensor`` in a model of ``layers`` layers; ``None`` if no entry matches."""
        for i, entry in enumerate(self.entries):
            if entry.matches(tensor):
                return i, interpolate(entry.values, tensor.layer, layers)
        return None

    def __repr__(self) -> str:
        return f"Schedule({self.key!r}, {self.entries!r})"
