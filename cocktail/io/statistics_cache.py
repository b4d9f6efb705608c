"""Example statistics on disk: one safetensors file per model, kind and set of examples.

A data-aware merge (RegMean, Fisher) needs, for every model, statistics of its tensors on its
examples: the Gram matrix of each linear layer's inputs, or the diagonal Fisher of each parameter.
They cost a pass of the model over its examples, so they are kept in cocktail's cache folder
(``statistics/`` beside the hash cache, see :func:`cocktail.io.hashing.cache_folder`), named by the
sha256 of everything they depend on (the model's weight hashes, the examples' hash, the pooling, the
max length, the kind): a sweep or a search over the weights solves again without running a model.

A file's tensors are the statistics under short keys (layers fed the same input, as a BERT layer's
query, key and value, share one Gram matrix); its metadata maps each parameter's canonical name to
its key and, for a Gram matrix, whether the weight is stored out×in (``nn.Linear``) or in×out
(GPT-2's ``Conv1D``). Files are written whole to a temporary name and renamed into place; merges
read them one tensor at a time, so memory holds a tensor's statistics of each model, never all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch

from cocktail.errors import InputError
from cocktail.io.hashing import cache_folder
from cocktail.io.safetensors_format import encode_header, read_header, read_tensor, tensor_bytes

KINDS = ("gram", "fisher")
FORMAT_VERSION = 1
OUT_IN = "out_in"  # nn.Linear: y = x Wᵀ
IN_OUT = "in_out"  # Conv1D: y = x W


def statistics_key(fields: dict) -> str:
    """The sha256 naming a statistics file: of every field it depends on (JSON, keys sorted)."""
    payload = json.dumps({"format": FORMAT_VERSION, **fields}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def statistics_folder() -> Optional[Path]:
    """Where statistics are cached (``None``: the cache is off, ``COCKTAIL_CACHE_DIR`` set empty)."""
    folder = cache_folder()
    return None if folder is None else folder / "statistics"


def write_statistics(path: Path, kind: str, tensors: dict[str, torch.Tensor], parameters: dict[str, tuple[str, str]],
                     info: Optional[dict] = None) -> Path:
    """Write ``tensors`` (by key) as the statistics file ``path``: ``parameters`` maps each parameter's
    canonical name to ``(key, layout)``; ``info`` (JSON) says what they were computed from."""
    if kind not in KINDS:
        raise ValueError(f"unknown statistics kind {kind!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [(key, tensor.dtype, tuple(tensor.shape)) for key, tensor in tensors.items()]
    metadata = {"kind": kind, "format": str(FORMAT_VERSION), "parameters": json.dumps(parameters),
                "info": json.dumps(info or {}, default=str)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(encode_header(entries, metadata))
            for key in tensors:
                f.write(tensor_bytes(tensors[key].cpu()))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


class ModelStatistics:
    """One model's statistics of one kind, read from its file a tensor at a time."""

    def __init__(self, path: Path, label: str = ""):
        self.path = Path(path)
        self.label = label or str(path)
        self.entries, metadata = read_header(self.path)
        try:
            self.kind = metadata["kind"]
            self.parameters = {name: tuple(value) for name, value in json.loads(metadata["parameters"]).items()}
            self.info = json.loads(metadata.get("info", "{}"))
        except (KeyError, ValueError, TypeError):
            raise InputError(f"{self.path}: not a cocktail statistics file (delete it: it is made again)") from None
        self._fd: Optional[int] = None

    def name_of(self, planned, index: int) -> Optional[str]:
        """The name the planned tensor's statistics have here (``None``: it has none)."""
        return planned.canonical if planned.canonical in self.parameters else None

    def norm(self) -> float:
        """The L2 norm of all these statistics together (one read of the file, a tensor at a time)."""
        return _l2_norm(self.read(name)[0] for name in self.parameters)

    def read(self, canonical: str) -> Optional[tuple[torch.Tensor, bool]]:
        """``(statistics, transposed)`` of the parameter ``canonical`` (``None`` when it has none);
        ``transposed``: the weight is stored out×in."""
        found = self.parameters.get(canonical)
        if found is None:
            return None
        key, layout = found
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return read_tensor(self._fd, self.entries[key]), layout == OUT_IN

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class StatisticsSet:
    """Every merged model's statistics (aligned with the plan's checkpoints), looked up per tensor."""

    def __init__(self, kind: str, models: list[ModelStatistics], notes: Optional[list[str]] = None,
                 provenance: Optional[dict] = None, cleanup: Optional[Path] = None):
        self.kind = kind
        self.models = models
        self.notes = list(notes or [])
        self.provenance = provenance or {}
        self._cleanup = cleanup  # a temporary folder of statistics (no cache): removed on close
        self._norms: Optional[list[float]] = None

    def norms(self) -> list[float]:
        """Each model's L2 norm of all its statistics (computed on the first call)."""
        if self._norms is None:
            self._norms = [model.norm() for model in self.models]
        return self._norms

    def for_tensor(self, planned) -> Optional[tuple[list[torch.Tensor], bool]]:
        """Each model's statistics of the planned tensor and whether its weight is out×in; ``None``
        unless every model has them (the tensor is then merged linearly)."""
        names = [model.name_of(planned, i) for i, model in enumerate(self.models)]
        if any(name is None for name in names):
            return None
        found = [model.read(name) for model, name in zip(self.models, names)]
        return [f[0] for f in found], found[0][1]

    def close(self) -> None:
        for model in self.models:
            model.close()
        if self._cleanup is not None:
            shutil.rmtree(self._cleanup, ignore_errors=True)
            self._cleanup = None


class MemoryStatistics:
    """One model's statistics given in memory: ``{tensor name: statistics}`` (a Gram matrix for each
    ``nn.Linear`` weight, out×in; or a Fisher of each tensor's shape), by the model's own names."""

    def __init__(self, tensors: dict, label: str = "in memory"):
        self.tensors = dict(tensors)
        self.label = label
        for name, value in self.tensors.items():
            if not isinstance(name, str) or not isinstance(value, torch.Tensor):
                raise InputError(f"{label}: statistics must map tensor names to tensors, got {name!r}: "
                                 f"{type(value).__name__}")

    def name_of(self, planned, index: int) -> Optional[str]:
        for name in (planned.sources[index], planned.canonical):
            if name in self.tensors:
                return name
        return None

    def read(self, name: str) -> tuple[torch.Tensor, bool]:
        return self.tensors[name], True

    def norm(self) -> float:
        return _l2_norm(self.tensors.values())

    def close(self) -> None:
        pass


def _l2_norm(tensors) -> float:
    """The L2 norm of all ``tensors`` together, summed in float64."""
    total = 0.0
    for tensor in tensors:
        total += float(tensor.to(torch.float64).square().sum())
    return total ** 0.5
