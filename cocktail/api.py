"""The Python API: ``cocktail.merge`` and LM-Cocktail's ``mix_models`` / ``mix_models_by_layers``.

All of them build a :class:`~cocktail.recipe.Recipe` and run it on the same streaming engine as the
CLI, so a folder written from Python is byte-identical to one written by ``cocktail merge``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

from .runner import MergeResult, run
from .recipe import Recipe

PathLike = Union[str, os.PathLike]


def merge(models: Sequence[PathLike], weights: Optional[Sequence[float]] = None, output: Optional[PathLike] = None,
          *, model_type: str = "encoder", method: str = "linear", base: Optional[PathLike] = None,
          parameters: Optional[dict] = None, dtype: Optional[str] = None, normalize: bool = False,
          max_shard_size: Union[str, int] = "5GB", config_from: Optional[PathLike] = None, force: bool = False,
          dry_run: bool = False, progress: bool = False, seed: int = 0) -> MergeResult:
    """Merge the checkpoints in ``models`` into the folder ``output``.

    Args:
        models: model folders, single ``.safetensors`` files, or Hugging Face hub ids (from the local cache).
        weights: one weight per model, summing to 1 (``None``: equal weights). A weight may also be a
            per-tensor schedule: a list of numbers (a gradient over the layers) or a list of
            ``{"filter": regex, "value": ...}`` entries (see the README).
        output: the folder to write; it must not exist unless ``force``.
        model_type: ``encoder`` (embedding model), ``reranker`` or ``decoder``.
        method: the merge method: ``linear`` (the weighted average), ``task_arithmetic``, ``ties``,
            ``dare_linear``, ``dare_ties``, ``slerp`` or ``model_stock``.
        base: the base model, for methods that need one.
        parameters: the method's parameters, e.g. ``{"density": 0.5, "lambda": 1.0}`` or ``{"t": 0.3}``;
            each may be a per-tensor schedule like a weight.
        dtype: ``float32``, ``float16`` or ``bfloat16`` (default: each tensor's dtype in the first model).
        normalize: divide the weights by their sum instead of requiring it to be 1.
        max_shard_size: largest safetensors shard, e.g. ``"5GB"``.
        config_from: take config and tokenizer files from this model instead of the first.
        force: replace an existing ``output``.
        dry_run: run every check, write nothing.
        progress: show a progress bar on stderr.
        seed: seed of random methods (``dare_*``); recorded in the output's recipe.

    Returns:
        A :class:`~cocktail.merge.MergeResult` (weights used, plan, files written).

    Raises:
        cocktail.CocktailError: for any bad input; nothing is written then.
    """
    recipe = Recipe.from_models(
        models, weights, output=str(output) if output is not None else None, model_type=model_type,
        merge_method=method, base_model=str(base) if base is not None else None, parameters=dict(parameters or {}),
        dtype=dtype, normalize=normalize, max_shard_size=max_shard_size,
        config_from=str(config_from) if config_from is not None else None, seed=seed,
    )
    return run(recipe, force=force, dry_run=dry_run, progress=progress)


def load_model(path: PathLike, model_type: str):
    """Load a merged folder with the transformers class LM-Cocktail uses for ``model_type``."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    loader = {"encoder": AutoModel, "reranker": AutoModelForSequenceClassification,
              "decoder": AutoModelForCausalLM}[model_type]
    return loader.from_pretrained(str(path))


def _mix(model_names_or_paths, model_type, weights, output_path):
    if output_path is not None:
        merge(model_names_or_paths, weights, output_path, model_type=model_type, progress=True)
        return load_model(output_path, model_type)
    scratch = Path(tempfile.mkdtemp(prefix="cocktail-mix-"))
    try:
        merge(model_names_or_paths, weights, scratch / "merged", model_type=model_type)
        model = load_model(scratch / "merged", model_type)
        return model
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def mix_models(model_names_or_paths: Sequence[str], model_type: str, weights: Sequence[float],
               output_path: Optional[str] = None):
    """LM-Cocktail's ``mix_models``: merge with the given weights and return the loaded model.

    Args:
        model_names_or_paths: model folders or hub ids.
        model_type: ``decoder``, ``encoder`` or ``reranker``.
        weights: one weight per model, summing to 1.
        output_path: where to save the merged model (encoders get sentence-transformers files).

    Returns:
        The merged model, loaded with ``AutoModel`` (encoder), ``AutoModelForSequenceClassification``
        (reranker) or ``AutoModelForCausalLM`` (decoder).
    """
    return _mix(model_names_or_paths, model_type, weights, output_path)


def mix_models_by_layers(model_names_or_paths: Sequence[str], model_type: str, weights: Sequence[float],
                         output_path: Optional[str] = None):
    """LM-Cocktail's ``mix_models_by_layers``: same as :func:`mix_models` (cocktail always streams
    tensor by tensor, so there is no separate low-memory path)."""
    return _mix(model_names_or_paths, model_type, weights, output_path)
