"""Run a Recipe: open checkpoints, plan, resolve weights, stream every tensor through the method
into the writer, and put the output folder in place.

This is the one path every door (CLI, Python API, YAML recipes) goes through.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from . import card, sidefiles
from .checkpoint import TRANSFORMER, Checkpoint, resolve
from .errors import CocktailError, InputError
from .methods import Method, get_method
from .output import OutputFolder, check_output
from .plan import COPY, Plan, PlannedTensor, build_plan
from .recipe import DTYPES, MODEL_TYPES, Recipe
from .version import __version__
from .weights import fixed_weights
from .writer import ShardedSafetensorsWriter, parse_size

DTYPE_BY_NAME = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CocktailWarning(UserWarning):
    """A merge went ahead, but something deserves the user's attention."""


@dataclass
class MergeResult:
    """What a merge did: the weights it used, its plan, where it wrote (``None`` for a dry run)."""

    recipe: Recipe
    weights: list[float]
    plan: Plan
    output: Optional[Path] = None
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False
    few_shot: Optional[dict] = None  # losses and details when the weights came from examples

    def summary(self) -> dict:
        return {
            "output": str(self.output) if self.output else None,
            "dry_run": self.dry_run,
            "method": self.recipe.merge_method,
            "model_type": self.recipe.model_type,
            "weights": self.weights,
            **self.plan.summary(),
            "files": self.files,
            "warnings": self.warnings,
            **({"weights_from": self.few_shot} if self.few_shot else {}),
        }


def output_dtype(name: Optional[str]) -> Optional[torch.dtype]:
    if name is None:
        return None
    if name not in DTYPE_BY_NAME:
        raise InputError(f"unknown dtype {name!r} (choose from {', '.join(DTYPES)})")
    return DTYPE_BY_NAME[name]


def check_recipe(recipe: Recipe) -> Method:
    """Checks that need no file: model count, model type, method, dtype, shard size."""
    if not recipe.models:
        raise InputError("no models given")
    if recipe.model_type not in MODEL_TYPES:
        raise InputError(f"unknown model type {recipe.model_type!r} (choose from {', '.join(MODEL_TYPES)})")
    method = get_method(recipe.merge_method)
    if method.needs_base and not recipe.base_model:
        raise InputError(f"merge method {method.name} needs a base model")
    output_dtype(recipe.dtype)
    parse_size(recipe.max_shard_size)
    return method


def open_checkpoints(recipe: Recipe) -> tuple[list[Checkpoint], Optional[Checkpoint]]:
    opened: list[Checkpoint] = []
    try:
        for entry in recipe.models:
            opened.append(Checkpoint.open(entry.path))
        base = Checkpoint.open(recipe.base_model) if recipe.base_model else None
    except BaseException:
        for ckpt in opened:
            ckpt.close()
        raise
    return opened, base


def resolve_weights(recipe: Recipe, method: Method) -> tuple[list[float], list[str]]:
    """The weight of each model, and any warnings about them."""
    if recipe.weights_from:  # computed from examples (run() shares its plan instead of opening twice)
        from .fewshot import FewShotRequest

        request = FewShotRequest(recipe, method)
        checkpoints, base = open_checkpoints(recipe)
        try:
            return request.run(build_plan(checkpoints, base))
        finally:
            for ckpt in checkpoints + ([base] if base else []):
                ckpt.close()
    if not method.uses_weights:
        return [1.0 / len(recipe.models)] * len(recipe.models), []
    return fixed_weights(recipe.weights, len(recipe.models), recipe.normalize)


def merged_tensors(plan: Plan, method: Method, weights: list[float], parameters: dict,
                   on_tensor: Optional[Callable[[PlannedTensor], None]] = None
                   ) -> Iterator[tuple[PlannedTensor, torch.Tensor]]:
    """Yield ``(planned, tensor)`` for every output tensor, in plan order, holding one name at a time."""
    for planned in plan.tensors:
        if planned.action == COPY:
            tensor = plan.checkpoints[0].read(planned.component, planned.sources[0])
            tensor = tensor.to(planned.out_dtype)
        else:
            inputs = [ckpt.read(planned.component, source).to(torch.float32)
                      for ckpt, source in zip(plan.checkpoints, planned.sources)]
            base = None
            if plan.base is not None and planned.base_source is not None:
                base = plan.base.read(planned.component, planned.base_source).to(torch.float32)
            tensor = method(inputs, weights, base, **parameters).to(planned.out_dtype)
            del inputs, base
        yield planned, tensor
        if on_tensor is not None:
            on_tensor(planned)


def merge_to_state_dict(plan: Plan, method: Method, weights: list[float], parameters: Optional[dict] = None,
                        component: str = TRANSFORMER) -> dict[str, torch.Tensor]:
    """Merge in memory: ``{output name: tensor}`` of one component (the transformer by default)."""
    return {planned.name: tensor for planned, tensor in merged_tensors(plan, method, weights, parameters or {})
            if planned.component == component}


def _warn_default(message: str) -> None:
    warnings.warn(message, CocktailWarning, stacklevel=3)


def run(recipe: Recipe, *, force: bool = False, dry_run: bool = False, progress: bool = False,
        on_warning: Optional[Callable[[str], None]] = None) -> MergeResult:
    """Run ``recipe``: check everything, then stream the merge into its output folder.

    With ``dry_run`` every check runs (inputs, compatibility, weights, output location) and nothing
    is written. Warnings go to ``on_warning`` (default: Python warnings).
    """
    warn = on_warning or _warn_default
    method = check_recipe(recipe)
    if not dry_run and not recipe.output:
        raise InputError("no output folder given")
    few_shot = None
    if recipe.weights_from:  # options and examples are checked now, before any model is opened
        from .fewshot import FewShotRequest

        few_shot = FewShotRequest(recipe, method)
        weights, weight_warnings = [], []
    else:
        weights, weight_warnings = resolve_weights(recipe, method)
    checkpoints, base = open_checkpoints(recipe)
    try:
        plan = build_plan(checkpoints, base, output_dtype(recipe.dtype))
        if few_shot is not None:
            if recipe.output:  # refuse a bad output before spending time on losses
                check_output(recipe.output, [c.root for c in checkpoints] + ([base.root] if base else []), force)
            weights, weight_warnings = few_shot.run(plan, progress=progress)
        messages = weight_warnings + plan.notes
        for message in messages:
            warn(message)
        inputs = [c.root for c in checkpoints] + ([base.root] if base else [])
        target = check_output(recipe.output, inputs, force) if recipe.output else None
        result = MergeResult(recipe, weights, plan, target, warnings=messages, dry_run=dry_run,
                             few_shot=few_shot.provenance() if few_shot else None)
        if dry_run:
            return result
        result.files = _write(recipe, plan, method, weights, target, force, progress, result.few_shot)
        return result
    finally:
        for ckpt in checkpoints + ([base] if base else []):
            ckpt.close()


def _write(recipe: Recipe, plan: Plan, method: Method, weights: list[float], target: Path, force: bool,
           progress: bool, few_shot: Optional[dict] = None) -> list[str]:
    first = plan.checkpoints[0]
    every = plan.checkpoints + ([plan.base] if plan.base else [])
    hasher = card.InputHasher([(c.root, c.weight_files()) for c in every])
    max_shard = parse_size(recipe.max_shard_size)
    files: list[str] = []
    try:
        with OutputFolder(target, force) as folder:
            writers = {}
            for component in plan.components:
                rel_dir = first.components[component].rel_dir
                (folder.tmp / rel_dir).mkdir(parents=True, exist_ok=True)
                entries = [(t.name, t.out_dtype, t.shape) for t in plan.tensors_of(component)]
                writers[component] = (rel_dir, ShardedSafetensorsWriter(folder.tmp / rel_dir, entries, max_shard))
            bar = _progress_bar(plan, progress)
            try:
                for planned, tensor in merged_tensors(plan, method, weights, recipe.parameters,
                                                      on_tensor=lambda t: bar.update(t.nbytes)):
                    writers[planned.component][1].write(planned.name, tensor)
                    del tensor
            finally:
                bar.close()
                for _, writer in writers.values():
                    writer.abort()
            for rel_dir, writer in writers.values():
                files += [os.path.join(rel_dir, name) for name in writer.close()]
            files += _write_side_files(recipe, plan, folder.tmp)
            hashes = hasher.result()
            files += _write_provenance(recipe, plan, weights, hashes, folder.tmp, few_shot)
            folder.commit()
    except BaseException:
        hasher.cancel()
        raise
    return sorted(files)


def _progress_bar(plan: Plan, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=plan.output_bytes, unit="B", unit_scale=True, desc="merging", file=sys.stderr,
                disable=not enabled, leave=False)


def _write_side_files(recipe: Recipe, plan: Plan, dest: Path) -> list[str]:
    source = resolve(recipe.config_from) if recipe.config_from else plan.checkpoints[0].root
    if source.is_file():
        source = source.parent
    copied = sidefiles.copy_side_files(source, dest)
    main_dir = dest / plan.checkpoints[0].components[TRANSFORMER].rel_dir
    floats = [t for t in plan.tensors if t.out_dtype.is_floating_point]
    if floats:
        by_size: dict[torch.dtype, int] = {}
        for t in floats:
            by_size[t.out_dtype] = by_size.get(t.out_dtype, 0) + t.nbytes
        sidefiles.set_config_dtype(main_dir / "config.json", max(by_size, key=by_size.get))
    if recipe.model_type == "encoder" and not sidefiles.has_sentence_transformers_files(dest):
        copied += sidefiles.write_bge_sentence_transformers_files(dest, plan.checkpoints[0].config)
    return copied


def _absolute(path: Optional[str]) -> Optional[str]:
    if path is None:
        return None
    local = Path(path).expanduser()
    return str(local.absolute()) if local.exists() else path


def resolved_recipe(recipe: Recipe, plan: Plan, weights: list[float], hashes: list[dict],
                    few_shot: Optional[dict] = None) -> dict:
    """The recipe as run: absolute paths, the weights used, and what the inputs were.

    Weights computed from examples are written as fixed weights (``weights_from: null``), so the
    recipe reruns to the same model; how they were computed goes to ``provenance.weights_from``."""
    data = recipe.to_dict()
    for entry, weight in zip(data["models"], weights):
        entry["path"] = _absolute(entry["path"])
        entry["weight"] = weight
    data["base_model"] = _absolute(recipe.base_model)
    data["config_from"] = _absolute(recipe.config_from)
    data["output"] = str(Path(recipe.output).expanduser().absolute()) if recipe.output else None
    data["normalize"] = False  # the weights above are already the ones used
    every = plan.checkpoints + ([plan.base] if plan.base else [])
    data["provenance"] = {
        "cocktail_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "inputs": [{"path": _absolute(c.source), "sha256": h} for c, h in zip(every, hashes)],
    }
    if few_shot is not None:
        data["weights_from"] = None
        data["provenance"]["weights_from"] = few_shot
    return data


def _write_provenance(recipe: Recipe, plan: Plan, weights: list[float], hashes: list[dict], dest: Path,
                      few_shot: Optional[dict] = None) -> list[str]:
    data = resolved_recipe(recipe, plan, weights, hashes, few_shot)
    (dest / card.RECIPE_FILE).write_text(card.dump_yaml(data))
    library = "sentence-transformers" if sidefiles.has_sentence_transformers_files(dest) else "transformers"
    (dest / card.CARD_FILE).write_text(card.model_card(data, weights, plan.summary(), library, __version__))
    return [card.RECIPE_FILE, card.CARD_FILE]


__all__ = ["run", "MergeResult", "merged_tensors", "merge_to_state_dict", "CocktailWarning", "CocktailError"]
