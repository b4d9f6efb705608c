"""The streaming loop: every output tensor of a plan, merged one at a time, and written as it is made.

Inputs are read in their own dtype and accumulated in float32 (float64 where an input is float64, so
weights 1/0 give a float64 model back bit for bit); each tensor is written in the dtype the plan gives
it (``--dtype``, else the first model's). Copied tensors (non-float buffers, head tensors only some
models have) come from the first model unchanged but for that cast. Every float tensor written is
checked for NaN and infinity on its way to the file (one min/max pass over the tensor just made): an
output that would hold them is refused, naming the tensors, unless ``allow_nonfinite``. Peak memory
is about N + 1 tensors for N models.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from tqdm import tqdm

from cocktail.errors import InputError, few_names, option
from cocktail.io.checkpoints import TRANSFORMER
from cocktail.io.head_files import HeadFileWriter, is_head_file
from cocktail.io.writer import ShardedSafetensorsWriter, plan_shards
from cocktail.merging.methods import Method
from cocktail.merging.plan import COPY, Plan, PlannedTensor
from cocktail.merging.tensor_settings import TensorSettings, resolve_settings, tensor_generator
from cocktail.recipe.choices import DTYPES


def output_dtype(name: Optional[str]) -> Optional[torch.dtype]:
    """The torch dtype of an output dtype name (``None``: keep each tensor's dtype)."""
    if name is None:
        return None
    if name not in DTYPES:
        raise InputError(f"unknown dtype {name!r} (choose from {', '.join(DTYPES)})")
    return getattr(torch, name)


def merged_tensors(plan: Plan, method: Method, weights: list, parameters: dict,
                   on_tensor: Optional[Callable[[PlannedTensor], None]] = None, *,
                   settings: Optional[list[Optional[TensorSettings]]] = None, seed: int = 0,
                   reuse: bool = False, statistics=None, ridged: Optional[list] = None
                   ) -> Iterator[tuple[PlannedTensor, torch.Tensor]]:
    """Yield ``(planned, tensor)`` for every output tensor, in plan order, holding one name at a time.

    Each tensor is merged with its own weights and parameters (``settings``, resolved from ``weights``
    and ``parameters`` when not given); random methods get a generator seeded from ``seed`` and the
    tensor's name. A data-aware method gets each model's ``statistics`` of the tensor (a
    :class:`~cocktail.io.statistics_cache.StatisticsSet`; ``None`` for a tensor without them) and
    appends to ``ridged`` the layers it had to regularise to solve. With ``reuse`` (for a consumer done with each tensor before it asks for the next,
    as the writer is), methods that can write into a given tensor get one scratch tensor per shape
    that occurs more than once, reused from tensor to tensor instead of fresh memory each time.
    """
    if method.needs_base and plan.base is None:
        raise InputError(f"merge method {method.name} needs a base model")
    if method.statistics is not None and statistics is None:
        raise InputError(f"merge method {method.name} needs statistics of each model on its examples "
                         f"({option('examples')})")
    if settings is None:
        settings, _ = resolve_settings(plan, method, weights, parameters)
    scratch = ScratchTensors(plan) if reuse and method.takes_out else None
    for planned, setting in zip(plan.tensors, settings):
        if planned.action == COPY:
            tensor = plan.checkpoints[0].read(planned.component, planned.sources[0])
            tensor = tensor.to(planned.out_dtype)
        else:
            inputs = [ckpt.read(planned.component, source).to(planned.accumulate)
                      for ckpt, source in zip(plan.checkpoints, planned.sources)]
            base = None
            if plan.base is not None and planned.base_source is not None:
                base = plan.base.read(planned.component, planned.base_source).to(planned.accumulate)
            extra = {"generator": tensor_generator(seed, planned.component, planned.canonical)} if method.random else {}
            if scratch is not None:
                extra["out"] = scratch.get(planned)
            if method.statistics is not None:
                extra.update(tensor_statistics(statistics, planned, ridged))
            tensor = method(inputs, list(setting.weights), base, **setting.parameters, **extra).to(planned.out_dtype)
            del inputs, base
        yield planned, tensor
        if on_tensor is not None:
            on_tensor(planned)


def tensor_statistics(statistics, planned: PlannedTensor, ridged: Optional[list]) -> dict:
    """The keyword arguments a data-aware method gets for one tensor: each model's statistics of it
    (``None`` when it has none: merged linearly), checked against the tensor's shape."""
    found = statistics.for_tensor(planned) if planned.component == TRANSFORMER else None
    if found is None:
        return {"statistics": None}
    tensors, transposed = found
    shape = tuple(planned.shape)
    if statistics.kind == "gram":
        width = shape[1] if transposed else shape[0]
        expected = (width, width) if len(shape) == 2 else None
    else:
        expected = shape
    if any(tuple(t.shape) != expected for t in tensors):
        raise InputError(f"the {statistics.kind} statistics of {planned.name} have shape {list(tensors[0].shape)}, "
                         f"which does not fit its shape {list(shape)}")
    extra = {"statistics": tensors}
    if statistics.kind == "gram":
        extra.update(transposed=transposed, ridged=ridged, name=planned.name)
    else:
        extra["norms"] = statistics.norms  # each model's Fisher norm, computed only when a merge asks
    return extra


class ScratchTensors:
    """One scratch tensor per (shape, accumulation dtype) that occurs more than once in a plan: merging
    into it again and again costs no fresh pages (a page fault each 4 KB) and no allocation."""

    def __init__(self, plan: Plan):
        counts: dict = {}
        for t in plan.tensors:
            if t.action != COPY:
                counts[(t.shape, t.accumulate)] = counts.get((t.shape, t.accumulate), 0) + 1
        self._repeated = {key for key, count in counts.items() if count > 1}
        self._tensors: dict = {}

    def get(self, planned: PlannedTensor) -> Optional[torch.Tensor]:
        key = (planned.shape, planned.accumulate)
        if key not in self._repeated:
            return None
        if key not in self._tensors:
            self._tensors[key] = torch.empty(planned.shape, dtype=planned.accumulate)
        return self._tensors[key]


def merge_to_state_dict(plan: Plan, method: Method, weights: list, parameters: Optional[dict] = None,
                        component: str = TRANSFORMER, seed: int = 0) -> dict[str, torch.Tensor]:
    """Merge in memory: ``{output name: tensor}`` of one component (the transformer by default)."""
    return {planned.name: tensor for planned, tensor in merged_tensors(plan, method, weights, parameters or {},
                                                                       seed=seed)
            if planned.component == component}


def shard_counts(plan: Plan, max_shard: int) -> tuple[dict[str, int], list[str]]:
    """How many safetensors files each component's weights take (by its folder, ``.`` for the top one),
    and the tensors larger than ``max_shard`` (each then has a file of its own)."""
    first = plan.checkpoints[0]
    counts: dict[str, int] = {}
    oversized: list[str] = []
    for component in plan.components:
        if is_head_file(first.components[component]):
            continue  # written with torch.save under its own name, never sharded
        tensors = plan.tensors_of(component)
        counts[first.components[component].rel_dir or "."] = len(
            plan_shards([(t.name, t.out_dtype, t.shape) for t in tensors], max_shard))
        oversized += [t.name for t in tensors if t.nbytes > max_shard]
    return counts, oversized


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN and no infinity in ``tensor``: its min and max are finite (NaN propagates through both).

    One vectorised reduction, an order of magnitude cheaper than ``torch.isfinite(t).all()`` (which
    writes a bool per entry, then reads it back)."""
    if not tensor.dtype.is_floating_point or tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor.reshape(-1))
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def finite_checked(tensors: Iterator[tuple[PlannedTensor, torch.Tensor]], allow_nonfinite: bool,
                   nonfinite: list[str]) -> Iterator[tuple[PlannedTensor, torch.Tensor]]:
    """``tensors``, each float one checked for NaN and inf on its way: the name of each holding them is
    added to ``nonfinite``. Without ``allow_nonfinite`` nothing is passed on after the first such tensor,
    but the rest are still checked, so the error can name them all."""
    for planned, tensor in tensors:
        if not all_finite(tensor):
            nonfinite.append(planned.name)
        if allow_nonfinite or not nonfinite:
            yield planned, tensor
        del tensor  # before the next tensor is made: one merged tensor alive at a time


def nonfinite_message(names: list[str]) -> str:
    """What a merge whose output would hold NaN or infinite values says, naming the tensors."""
    one = len(names) == 1
    return (f"{len(names)} output tensor{'' if one else 's'} would hold NaN or infinite values: {few_names(names)} "
            f"(an input holds them, {option('dtype')} cannot represent them, or a method parameter is too large)")


def write_tensors(plan: Plan, tensors: Callable[[Callable[[PlannedTensor], None]], Iterator], dest: Path,
                  max_shard: int, elementwise: bool, progress: bool, allow_nonfinite: bool = False
                  ) -> tuple[list[str], list[str]]:
    """Stream ``tensors(on_tensor)`` into safetensors shards under ``dest``, each component in the
    first model's folder for it, and each head file under its own name (``colbert_linear.pt``):
    ``(files written, written tensors holding NaN or inf)``.

    Every float tensor is checked before it is written, merged and copied ones alike. Without
    ``allow_nonfinite``, the first one holding NaN or inf stops the writing; the others are still
    checked so the error names them all, and nothing is left in ``dest``'s files to use."""
    first = plan.checkpoints[0]
    writers = {}
    for component in plan.components:
        rel_dir = first.components[component].rel_dir
        (dest / rel_dir).mkdir(parents=True, exist_ok=True)
        entries = [(t.name, t.out_dtype, t.shape) for t in plan.tensors_of(component)]
        if is_head_file(first.components[component]):
            writer = HeadFileWriter(dest / rel_dir, first.components[component].head_file, entries)
        else:
            writer = ShardedSafetensorsWriter(dest / rel_dir, entries, max_shard)
        writers[component] = (rel_dir, writer)
    bar = tqdm(total=plan.output_bytes, unit="B", unit_scale=True, desc="merging", file=sys.stderr,
               disable=not progress, leave=False)
    nonfinite: list[str] = []
    threads = torch.get_num_threads()
    if elementwise:
        # Elementwise arithmetic is memory-bound: one thread does it as fast as several, and
        # leaves the other cores to the input hashing running beside it.
        torch.set_num_threads(1)
    try:
        for planned, tensor in finite_checked(tensors(lambda t: bar.update(t.nbytes)), allow_nonfinite, nonfinite):
            writers[planned.component][1].write(planned.name, tensor)
            del tensor
        if nonfinite and not allow_nonfinite:
            raise InputError(f"{nonfinite_message(nonfinite)}; nothing was written ({option('allow_nonfinite')} "
                             f"writes them anyway)")
    finally:
        torch.set_num_threads(threads)
        bar.close()
        for _, writer in writers.values():
            writer.abort()
    files = []
    for rel_dir, writer in writers.values():
        files += [os.path.join(rel_dir, name) for name in writer.close()]
    return files, nonfinite
