"""The ``Recipe``: everything a merge needs, as one value.

The CLI, the Python API and YAML recipe files all build a ``Recipe`` and hand it to
``cocktail.merge.run``. A recipe is plain data: it round-trips through ``to_dict``/``from_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import InputError

MODEL_TYPES = ("encoder", "reranker", "decoder")
DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class ModelEntry:
    path: str
    weight: Optional[float | list] = None  # a number, or a per-tensor schedule (see schedules.py)

    def to_dict(self) -> dict:
        entry: dict[str, Any] = {"path": self.path}
        if self.weight is not None:
            entry["weight"] = self.weight
        return entry


@dataclass
class Recipe:
    models: list[ModelEntry]
    output: Optional[str] = None
    model_type: str = "encoder"
    merge_method: str = "linear"
    base_model: Optional[str] = None
    weights_from: Optional[dict] = None
    parameters: dict = field(default_factory=dict)
    dtype: Optional[str] = None
    normalize: bool = False
    max_shard_size: str = "5GB"
    config_from: Optional[str] = None
    seed: int = 0

    @classmethod
    def from_models(cls, paths, weights=None, **options) -> "Recipe":
        """A recipe for ``paths`` with one weight each (``weights=None``: equal weights)."""
        paths = [str(p) for p in paths]
        if weights is not None and len(weights) != len(paths):
            raise InputError(f"got {len(weights)} weights for {len(paths)} models: give one weight per model")
        weights = list(weights) if weights is not None else [None] * len(paths)
        return cls(models=[ModelEntry(p, w) for p, w in zip(paths, weights)], **options)

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
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        data = dict(data)
        models = [ModelEntry(**m) if isinstance(m, dict) else ModelEntry(str(m)) for m in data.pop("models")]
        data.pop("provenance", None)
        return cls(models=models, **data)
