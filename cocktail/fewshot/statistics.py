"""The statistics data-aware merges need, computed by running each model on its own examples.

- **gram** (RegMean): for every linear layer (``nn.Linear``, and GPT-2's ``Conv1D``), the Gram
  matrix of its inputs over the examples' tokens, ``G = Xᵀ X / n`` (n the number of input rows
  counted, so a model's weight, not the length of its examples, sets its share). Padding tokens never
  count: a layer's input of shape ``(batch, tokens, features)`` keeps only the rows the forward
  pass's ``attention_mask`` marks. The inputs are caught by forward hooks during the very pass that
  computes the model's few-shot loss (:meth:`~cocktail.fewshot.losses.Prepared.loss`), so the
  pooling, instruction and truncation are the loss's. Layers fed the same input (a BERT layer's
  query, key and value) share one matrix, computed once per batch.
- **fisher** (Fisher merging): for every parameter, the diagonal Fisher of the model's own few-shot
  loss, ``F = mean over examples of (∂ loss_e / ∂θ)²``, with ``loss_e`` each example's term of
  that loss: one backward pass per example (:mod:`cocktail.fewshot.example_gradients`, which bounds
  the graph kept at once).

Statistics are keyed by the plan's canonical tensor names and written to
:mod:`cocktail.io.statistics_cache` files; merges read them a tensor at a time.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

import torch

from cocktail.errors import InputError
from cocktail.fewshot import losses as L
from cocktail.fewshot.example_gradients import example_gradients
from cocktail.fewshot.examples import ExampleSet
from cocktail.fewshot.weighting import KEEP_SEED_OFFSET, LossContext
from cocktail.io.checkpoints import TRANSFORMER
from cocktail.io.statistics_cache import (
    IN_OUT,
    OUT_IN,
    ModelStatistics,
    StatisticsSet,
    statistics_folder,
    statistics_key,
    write_statistics,
)
from cocktail.merging.plan import MERGE, Plan, build_plan
from cocktail.modeling.footprint import GRAPH_BUDGET, graph_bytes
from cocktail.modeling.placement import Placement, release_heap
from cocktail.modeling.skeleton import Skeleton
from cocktail.recipe.weights_from import FewShotOptions


def linear_layers(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, str]]:
    """``{module name: (module, layout)}`` of every linear layer: ``nn.Linear`` (weight out×in) and
    GPT-2's ``Conv1D`` (weight in×out). A layer whose weight is also an embedding (a decoder's tied
    ``lm_head``) is left out: that one tensor is merged as the embedding it also is, linearly."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    found = {}
    for name, module in model.named_modules():
        if id(getattr(module, "weight", None)) in embeddings:
            continue
        if isinstance(module, torch.nn.Linear):
            found[name] = (module, OUT_IN)
        elif type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None \
                and module.weight.dim() == 2:
            found[name] = (module, IN_OUT)
    return found


def parameter_names(skeleton, plan: Plan) -> dict[int, str]:
    """``{id(parameter): canonical name in the plan}`` for every merged transformer tensor the model holds."""
    names = {}
    for planned in plan.tensors:
        if planned.component != TRANSFORMER or planned.action != MERGE:
            continue
        target = skeleton._target(planned.canonical)
        if target is not None:
            names.setdefault(id(target), planned.canonical)
    return names


def _rows(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """A layer input as ``(rows, features)``: only the tokens ``mask`` marks when it lines up with them."""
    if x.dim() >= 3 and mask is not None and tuple(x.shape[:2]) == tuple(mask.shape):
        return x[mask.bool()].reshape(-1, x.shape[-1])
    if x.dim() == 2 and mask is not None and x.shape[0] == mask.numel():
        return x[mask.reshape(-1).bool()]
    return x.reshape(-1, x.shape[-1])


class GramCollector:
    """Forward hooks that add each linear layer's input Gram matrix up while a model runs.

    ``with GramCollector(model) as grams: prepared.loss(model)``; then ``grams.result(names)``."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.layers = linear_layers(model)
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.shares: dict[str, set[str]] = {}  # the layers that got the same input in every pass so far
        self._mask: Optional[torch.Tensor] = None
        self._last: Optional[list] = None  # [input, its Gram, rows, the layers that got it]: consecutive layers
        # fed the very same tensor (query, key, value) share its Gram; the reference held keeps its memory
        # from being reused by another input, which could otherwise look like the same tensor
        self._handles: list = []

    def __enter__(self) -> "GramCollector":
        self._handles.append(self.model.register_forward_pre_hook(self._start, with_kwargs=True))
        for name, (module, _) in self.layers.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        self._end_pass()
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _start(self, module, args, kwargs):
        self._end_pass()
        mask = kwargs.get("attention_mask")
        self._mask = mask if isinstance(mask, torch.Tensor) else None

    def _end_pass(self) -> None:
        if self._last is not None:
            names = self._last[3]
            for name in names:
                together = set(names)
                self.shares[name] = self.shares[name] & together if name in self.shares else together
        self._last = None

    def _hook(self, name: str):
        def hook(module, args):
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                return
            if self._last is None or self._last[0] is not x:
                self._end_pass()
                rows = _rows(x.detach(), self._mask).float()
                self._last = [x, rows.T @ rows, rows.shape[0], []]
            _, gram, count, names = self._last
            names.append(name)
            if name in self.sums:
                self.sums[name].add_(gram)
            else:
                self.sums[name] = gram.clone()  # a sum of its own: layers sharing this pass's input may not share the next
            self.counts[name] = self.counts.get(name, 0) + count

        return hook

    def result(self, names: dict[int, str]) -> tuple[dict[str, torch.Tensor], dict[str, tuple[str, str]]]:
        """``(tensors by key, {canonical weight name: (key, layout)})``: each layer's mean Gram matrix,
        on the CPU, one tensor for the layers that always shared their input."""
        self._end_pass()
        tensors: dict[str, torch.Tensor] = {}
        parameters: dict[str, tuple[str, str]] = {}
        key_of: dict[str, str] = {}
        for name, (module, layout) in self.layers.items():
            canonical = names.get(id(module.weight))
            if canonical is None or name not in self.sums or self.counts[name] == 0:
                continue
            twin = next((other for other in key_of if other in self.shares.get(name, ())
                         and name in self.shares.get(other, ()) and self.counts[other] == self.counts[name]), None)
            total = self.sums.pop(name)  # each sum becomes its mean in place: no second copy of every Gram
            if twin is not None:
                key = key_of[twin]
            else:
                key = canonical
                with torch.inference_mode():  # the sums were made in a loss pass's inference mode
                    tensors[key] = total.div_(self.counts[name]).cpu()
            del total
            key_of[name] = key
            parameters[canonical] = (key, layout)
        return tensors, parameters


def gram_statistics(model: torch.nn.Module, prepared: L.Prepared, names: dict[int, str]
                    ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[str, str]]]:
    """Each linear layer's input Gram matrix over ``prepared``'s examples, caught during its loss pass."""
    with GramCollector(model) as grams:
        prepared.loss(model)
    return grams.result(names)


def fisher_statistics(model: torch.nn.Module, prepared: L.Prepared, names: dict[int, str]
                      ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[str, str]]]:
    """Each parameter's diagonal Fisher: the mean over examples of its squared per-example gradient.

    Holds the float32 parameters, one example's gradient, the sums, and a graph within
    :data:`~cocktail.modeling.footprint.GRAPH_BUDGET` (:mod:`cocktail.fewshot.example_gradients`).
    Embedding tables get sparse gradients and sums (the rows of the examples' tokens), made dense only
    at the end: neither is a copy of the table (94 MB for bge-base, 1 GB for an XLM-RoBERTa vocabulary,
    bge-m3's and bge-reranker's)."""
    params = [p for p in model.parameters() if id(p) in names]
    sums = [SquareSum(p) for p in params]
    config = model.config.to_dict() if hasattr(getattr(model, "config", None), "to_dict") else {}

    def fits(rows: int, longest: int) -> bool:
        return graph_bytes(config, prepared.model_type, rows, longest) <= GRAPH_BUDGET

    tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and id(m.weight) in names]
    sparse = [m.sparse for m in tables]
    flags = [p.requires_grad for p in params]
    count = 0
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    for table in tables:
        table.sparse = True
    try:
        with torch.enable_grad():
            for _ in example_gradients(model, prepared, params, fits):
                for p, total in zip(params, sums):
                    if p.grad is not None:
                        total.add(p.grad)
                        p.grad = None
                count += 1
    finally:
        for table, flag in zip(tables, sparse):
            table.sparse = flag
        for p, flag in zip(params, flags):
            p.grad = None
            p.requires_grad_(flag)
    release_heap()  # the gradients and graphs are gone: their memory goes back before the dense sums are made
    tensors = {names[id(p)]: total.take_mean(count) for p, total in zip(params, sums)}
    return tensors, {name: (name, "") for name in tensors}


class SquareSum:
    """The sum of one parameter's squared per-example gradients: sparse (the rows seen) while every
    gradient was an embedding table's sparse one, dense from the first dense one (a table that is also
    a linear layer, GPT-2's tied ``lm_head``)."""

    def __init__(self, parameter: torch.Tensor):
        self.parameter = parameter
        self.total: Optional[torch.Tensor] = None

    def add(self, grad: torch.Tensor) -> None:
        if grad.is_sparse:
            grad = grad.coalesce()  # a row's contributions summed before squaring
            square = torch.sparse_coo_tensor(grad.indices(), grad.values().float().square(), grad.shape,
                                             is_coalesced=True, check_invariants=False)  # the grad's own rows
            if self.total is None:
                self.total = square
            elif self.total.is_sparse:
                self.total = (self.total + square).coalesce()
            else:
                self.total.index_add_(0, grad.indices()[0], square.values())
            return
        if self.total is None:
            self.total = torch.zeros_like(self.parameter, dtype=torch.float32)
        elif self.total.is_sparse:
            self.total = self.total.to_dense()
        self.total.addcmul_(grad.float(), grad.float())

    def take_mean(self, count: int) -> torch.Tensor:
        """The mean over ``count`` examples, dense, on the CPU; the sum is given up (a sparse one made
        dense only now, one parameter at a time, and no second reference kept to it)."""
        total, self.total = self.total, None
        if total is None:
            return torch.zeros(self.parameter.shape, dtype=torch.float32)
        dense = total.to_dense() if total.is_sparse else total
        return dense.div_(max(count, 1)).cpu()


COLLECTORS = {"gram": gram_statistics, "fisher": fisher_statistics}


def examples_digest(examples: list) -> str:
    """The sha256 of the examples as scored (negatives already chosen): part of a statistics file's key."""
    payload = json.dumps([e.to_dict() for e in examples], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def statistics_for_plan(plan: Plan, model_type: str, kind: str, options: FewShotOptions, sources: list[str],
                        example_sets: dict[str, Optional[ExampleSet]], *, progress: bool = False,
                        trust_remote_code: bool = False) -> StatisticsSet:
    """Each checkpoint's ``kind`` statistics on its examples (``example_sets[sources[i]]`` for model i),
    from the cache when they are there, else computed one model at a time and cached.

    Without a cache folder (``COCKTAIL_CACHE_DIR=``) they go to a temporary folder that the set
    removes when it is closed."""
    if kind not in COLLECTORS:
        raise InputError(f"unknown kind of statistics {kind!r}")
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    seed = int(options.seed or 0)
    fplan = build_plan(plan.checkpoints, plan.base, torch.float32)
    context = LossContext.of(fplan, model_type, options, trust_remote_code)
    chosen = {name: L.choose_negatives(found.examples, options.neg_number,
                                       seed + (KEEP_SEED_OFFSET if name == "keep" else 0))
              for name, found in example_sets.items() if found is not None}
    for name in set(sources):
        if not chosen.get(name):
            raise InputError(f"no {name} examples to compute {kind} statistics on")
    digests = {name: examples_digest(found) for name, found in chosen.items()}
    folder = statistics_folder()
    temporary = None
    if folder is None:
        temporary = Path(tempfile.mkdtemp(prefix="cocktail-statistics-"))
        folder = temporary
    prepared: dict[str, L.Prepared] = {}
    skeleton = None
    names: dict[int, str] = {}
    models: list[ModelStatistics] = []
    record = []
    try:
        for index, checkpoint in enumerate(fplan.checkpoints):
            which = sources[index]
            fields = {"kind": kind, "model": checkpoint.content_hash(), "model_type": model_type,
                      "examples": digests[which], "max_length": context.max_length,
                      "pooling": list(context.pooling.modes) if context.pooling is not None else None,
                      "query_instruction": options.query_instruction,
                      "batch_size": options.batch_size if kind == "fisher" else None}
            key = statistics_key(fields)
            path = folder / f"{kind}-{key}.safetensors"
            cached = _readable(path, checkpoint.source)
            if cached is None:
                if skeleton is None:
                    for name in sorted(set(sources)):  # every set a model may need, for the memory estimate
                        prepared[name] = context.prepare(chosen[name])
                    largest = max((found.largest_batch() for found in prepared.values()),
                                  key=lambda shape: shape[0] * shape[1])
                    skeleton = Skeleton(fplan, model_type, _placement(options, context.device),
                                        trust_remote_code=trust_remote_code, largest_batch=largest,
                                        gradients=kind == "fisher")
                    names = parameter_names(skeleton, fplan)
                skeleton.fill_from_checkpoint(index)
                say(f"{kind} statistics of {checkpoint.source} on the {which} examples ({len(chosen[which])})")
                tensors, parameters = COLLECTORS[kind](skeleton.model, prepared[which], names)
                info = {"model": str(checkpoint.source), "examples": which, "count": len(chosen[which]),
                        "max_length": context.max_length}
                write_statistics(path, kind, tensors, parameters, info)
                del tensors
                cached = ModelStatistics(path, str(checkpoint.source))
            else:
                say(f"{kind} statistics of {checkpoint.source} on the {which} examples: cached")
            models.append(cached)
            record.append({"model": str(checkpoint.source), "examples": which, "count": len(chosen[which]),
                           "key": key})
    except BaseException:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        raise
    del skeleton, prepared
    release_heap()  # the model, its gradients and graphs are gone: their memory goes back before the merge
    provenance = {"kind": kind, "max_length": context.max_length,
                  "pooling": context.pooling.source if context.pooling is not None else None,
                  "examples_sha256": digests, "models": record}
    return StatisticsSet(kind, models, context.notes, provenance, cleanup=temporary)


def _placement(options: FewShotOptions, device: torch.device) -> Placement:
    """Statistics run in float32 with the whole model on ``device``; without a device map, the
    ``max_memory`` cap of that device holds for them (the estimate before loading refuses what exceeds it)."""
    scoring = options.scoring
    return Placement(device, caps=scoring.memory_caps() if scoring.device_map is None else None)


def _readable(path: Path, label: str) -> Optional[ModelStatistics]:
    """The cached statistics at ``path``, or ``None`` when there are none (or the file is damaged)."""
    if not path.is_file():
        return None
    try:
        return ModelStatistics(path, label)
    except InputError:
        return None
