"""Check that checkpoints can be merged, and list every output tensor before any byte is merged.

The plan matches tensors across models by a *canonical* name: the same weights saved from
``BertModel`` (``encoder.layer.0...``) and from ``BertForSequenceClassification``
(``bert.encoder.layer.0...``) are one tensor, written in the first model's naming. Float tensors are
merged (computed in float32, or in float64 where an input is float64); other tensors (``position_ids``
buffers) are copied from the first model and must be equal wherever present. Head tensors that only
some models have are reported, never averaged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cocktail.errors import IncompatibleModelsError, few_names
from cocktail.io.checkpoints import TRANSFORMER, Checkpoint, TensorInfo
from cocktail.io.head_files import is_head_file

MERGE = "merge"
COPY = "copy"

# base_model_prefix of common transformers classes, by config model_type (transformers is the
# fallback for others; this table saves importing it on the merge path).
BASE_PREFIX = {
    "bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "xlm-roberta-xl": "roberta",
    "camembert": "roberta", "distilbert": "distilbert", "deberta": "deberta", "deberta-v2": "deberta",
    "electra": "electra", "mpnet": "mpnet", "albert": "albert", "ernie": "ernie", "modernbert": "model",
    "gpt2": "transformer", "gpt_neox": "gpt_neox", "llama": "model", "mistral": "model", "mixtral": "model",
    "qwen2": "model", "qwen3": "model", "gemma": "model", "gemma2": "model", "phi3": "model", "phi": "model",
    "opt": "model", "falcon": "transformer", "bloom": "transformer",
}


def base_prefix(model_type: str | None) -> str | None:
    if not model_type:
        return None
    if model_type in BASE_PREFIX:
        return BASE_PREFIX[model_type]
    try:  # an architecture the table does not know: ask transformers
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

        class_name = MODEL_MAPPING_NAMES.get(model_type)
        return getattr(getattr(transformers, class_name), "base_model_prefix", None) if class_name else None
    except Exception:
        return None


def canonical_names(names, prefix: str | None) -> tuple[dict[str, str], set[str]]:
    """``({canonical: actual}, head_canonicals)`` for one model's tensor names.

    A model saved with its base-model prefix (``bert.``) has the prefix stripped; its other tensors
    are its head (classifier, MLM head, ...).
    """
    mapping: dict[str, str] = {}
    heads: set[str] = set()
    lead = f"{prefix}." if prefix else None
    prefixed = lead is not None and any(n.startswith(lead) for n in names)
    for name in names:
        if prefixed and name.startswith(lead):
            mapping[name[len(lead):]] = name
        else:
            mapping[name] = name
            if prefixed:
                heads.add(name)
    return mapping, heads


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: where it comes from in each model and what it becomes."""

    component: str
    name: str  # in the output (the first model's naming)
    canonical: str
    sources: tuple  # actual name in each model (None where absent)
    base_source: str | None
    shape: tuple[int, ...]
    out_dtype: torch.dtype
    action: str  # MERGE or COPY
    accumulate: torch.dtype = torch.float32  # what a merge computes in: float64 when an input is float64

    @property
    def nbytes(self) -> int:
        numel = 1
        for dim in self.shape:
            numel *= dim
        return numel * self.out_dtype.itemsize


@dataclass
class Plan:
    checkpoints: list[Checkpoint]
    base: Checkpoint | None
    tensors: list[PlannedTensor]
    notes: list[str] = field(default_factory=list)

    @property
    def components(self) -> list[str]:
        return list(dict.fromkeys(t.component for t in self.tensors))

    def tensors_of(self, component: str) -> list[PlannedTensor]:
        return [t for t in self.tensors if t.component == component]

    @property
    def merged_parameters(self) -> int:
        return sum(t.nbytes // t.out_dtype.itemsize for t in self.tensors if t.action == MERGE)

    @property
    def output_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def __repr__(self) -> str:  # not every planned tensor: a plan of a 7B model has hundreds
        counts = self.summary()
        base = f", base {counts['base_model']}" if counts["base_model"] else ""
        return (f"Plan({len(self.checkpoints)} models{base}: {counts['merged_tensors']} tensors merged, "
                f"{counts['copied_tensors']} copied, {counts['parameters']:,} parameters)")

    def summary(self) -> dict:
        dtypes: dict[str, int] = {}
        for t in self.tensors:
            key = str(t.out_dtype).replace("torch.", "")
            dtypes[key] = dtypes.get(key, 0) + 1
        return {
            "models": [c.source for c in self.checkpoints],
            "base_model": self.base.source if self.base else None,
            "tensors": len(self.tensors),
            "merged_tensors": sum(t.action == MERGE for t in self.tensors),
            "copied_tensors": sum(t.action == COPY for t in self.tensors),
            "parameters": self.merged_parameters,
            "output_bytes": self.output_bytes,
            "output_dtypes": dtypes,
            "components": self.components,
            "notes": list(self.notes),
        }


def build_plan(checkpoints: list[Checkpoint], base: Checkpoint | None = None,
               dtype: torch.dtype | None = None) -> Plan:
    """Check everything that can be checked without merging, and list the output tensors."""
    if not checkpoints:
        raise IncompatibleModelsError("no models to merge")
    every = checkpoints + ([base] if base is not None else [])
    _check_model_types(every)
    _check_components(every)
    tensors: list[PlannedTensor] = []
    notes: list[str] = []
    partial_heads = _check_head_files(every)
    for component in checkpoints[0].components:
        if component in partial_heads:
            planned, component_notes = _copy_head_file(component, checkpoints, base, dtype)
        else:
            planned, component_notes = _plan_component(component, checkpoints, base, dtype)
        tensors += planned
        notes += component_notes
    return Plan(checkpoints, base, tensors, notes)


def _check_model_types(every: list[Checkpoint]) -> None:
    types = {c.model_type for c in every if c.model_type}
    if len(types) > 1:
        described = "; ".join(f"{c.source} is {c.model_type or 'unknown'}" for c in every)
        raise IncompatibleModelsError(f"cannot merge different architectures: {described}")


def _modules(ckpt: Checkpoint) -> set[str]:
    """The components of ``ckpt`` but its head files: the transformer and sentence-transformers modules."""
    return {key for key, c in ckpt.components.items() if not is_head_file(c)}


def _heads(ckpt: Checkpoint) -> set[str]:
    return {key for key, c in ckpt.components.items() if is_head_file(c)}


def _check_components(every: list[Checkpoint]) -> None:
    first = every[0]
    for other in every[1:]:
        if _modules(other) != _modules(first):
            a = sorted(_modules(first) - {TRANSFORMER}) or ["none"]
            b = sorted(_modules(other) - {TRANSFORMER}) or ["none"]
            raise IncompatibleModelsError(
                f"sentence-transformers modules with weights differ: {first.source} has {', '.join(a)}, "
                f"{other.source} has {', '.join(b)}"
            )


def _check_head_files(every: list[Checkpoint]) -> set[str]:
    """The head files the first model has and some other model (or the base) lacks: these are copied
    from the first model. A head file the first model lacks cannot be written: refused, by name."""
    first = every[0]
    for other in every[1:]:
        extra = sorted(_heads(other) - _heads(first))
        if extra:
            raise IncompatibleModelsError(
                f"weight file {', '.join(extra)} is in {other.source} but not in the first model {first.source}: "
                f"it can be neither merged nor copied (put a model that has it first)")
    return {name for name in _heads(first) if any(name not in _heads(other) for other in every[1:])}


def _copy_head_file(component: str, checkpoints: list[Checkpoint], base: Checkpoint | None,
                    dtype: torch.dtype | None) -> tuple[list[PlannedTensor], list[str]]:
    """Every tensor of a head file only some models have, copied from the first model."""
    every = checkpoints + ([base] if base is not None else [])
    have = [c.source for c in every if component in _heads(c)]
    lack = [c.source for c in every if component not in _heads(c)]
    planned = []
    for name, info in checkpoints[0].infos(component).items():
        sources = tuple(name if component in _heads(c) else None for c in checkpoints)
        out = (dtype or info.dtype) if info.dtype.is_floating_point else info.dtype
        planned.append(PlannedTensor(component, name, name, sources, None, info.shape, out, COPY))
    note = (f"weight file {component} is in {', '.join(have)} but not in {', '.join(lack)}: "
            f"copied from the first model, not merged")
    return planned, [note]


def _plan_component(component: str, checkpoints: list[Checkpoint], base: Checkpoint | None,
                    dtype: torch.dtype | None) -> tuple[list[PlannedTensor], list[str]]:
    every = checkpoints + ([base] if base is not None else [])
    infos: list[dict[str, TensorInfo]] = [c.infos(component) for c in every]
    maps, heads = [], []
    for ckpt, info in zip(every, infos):
        prefix = base_prefix(ckpt.model_type) if component == TRANSFORMER else None
        mapping, head = canonical_names(info.keys(), prefix)
        maps.append(mapping)
        heads.append(head)
    label = "" if component == TRANSFORMER else f"module {component}: "

    def info_of(i: int, canonical: str) -> TensorInfo | None:
        actual = maps[i].get(canonical)
        return infos[i][actual] if actual is not None else None

    # Every float tensor of any model, in the first model's order, then the others' extras.
    order = list(dict.fromkeys(name for mapping in maps for name in mapping))
    is_float = {n: any((inf := info_of(i, n)) is not None and inf.dtype.is_floating_point
                       for i in range(len(every))) for n in order}

    missing: dict[str, list[str]] = {}
    head_only: list[str] = []
    for name in order:
        if not is_float[name]:
            continue
        absent = [every[i].source for i in range(len(every)) if name not in maps[i]]
        if not absent:
            continue
        in_head = any(name in heads[i] for i in range(len(every)))
        if in_head:
            head_only.append(name)
        else:
            missing[name] = absent
    if missing:
        names = list(missing)
        who = sorted({m for ms in missing.values() for m in ms})
        raise IncompatibleModelsError(
            f"{label}float tensors missing from {', '.join(who)}: {few_names(names)}"
        )

    notes = []
    if head_only:
        have = [c.source for i, c in enumerate(every) if any(n in maps[i] for n in head_only)]
        kept = [n for n in head_only if n in maps[0]]
        fate = "copied from the first model, not merged" if kept else "left out of the output"
        notes.append(f"{label}head tensors only some models have ({', '.join(have)}): {few_names(head_only)}; {fate}")

    planned: list[PlannedTensor] = []
    shape_errors: list[str] = []
    for name in order:
        if name not in maps[0]:
            continue  # output follows the first model; its missing tensors were handled above
        first = info_of(0, name)
        sources = tuple(maps[i].get(name) for i in range(len(checkpoints)))
        base_source = maps[-1].get(name) if base is not None else None
        if not first.dtype.is_floating_point:
            _check_copies_equal(component, name, every, maps, infos)
            planned.append(PlannedTensor(component, maps[0][name], name, sources, base_source,
                                         first.shape, first.dtype, COPY))
            continue
        if name in head_only:
            planned.append(PlannedTensor(component, maps[0][name], name, sources, base_source,
                                         first.shape, dtype or first.dtype, COPY))
            continue
        accumulate = torch.float64 if first.dtype == torch.float64 else torch.float32
        for i in range(1, len(every)):
            other = info_of(i, name)
            if not other.dtype.is_floating_point:
                raise IncompatibleModelsError(
                    f"{label}tensor {name} is {first.dtype} in {every[0].source} but {other.dtype} in {every[i].source}"
                )
            if other.dtype == torch.float64:
                accumulate = torch.float64
            if other.shape != first.shape:
                shape_errors.append(
                    f"{name} is {list(first.shape)} in {every[0].source} but {list(other.shape)} in {every[i].source}"
                )
                break
        planned.append(PlannedTensor(component, maps[0][name], name, sources, base_source,
                                     first.shape, dtype or first.dtype, MERGE, accumulate))
    if shape_errors:
        more = f" (and {len(shape_errors) - 1} more tensors)" if len(shape_errors) > 1 else ""
        raise IncompatibleModelsError(f"{label}tensor shapes differ: {shape_errors[0]}{more}")
    return planned, notes


def _check_copies_equal(component, name, every, maps, infos) -> None:
    reference = None
    for i, ckpt in enumerate(every):
        actual = maps[i].get(name)
        if actual is None:
            continue
        info = infos[i][actual]
        if info.dtype.is_floating_point:
            raise IncompatibleModelsError(
                f"tensor {name} is {info.dtype} in {ckpt.source} but not a float tensor in {every[0].source}"
            )
        value = ckpt.read(component, actual)
        if reference is None:
            reference = (ckpt.source, value)
        elif value.shape != reference[1].shape or not torch.equal(value, reference[1]):
            raise IncompatibleModelsError(
                f"non-float tensor {name} differs between {reference[0]} and {ckpt.source} (it is copied, not merged)"
            )
