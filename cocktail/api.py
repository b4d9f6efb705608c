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

from .errors import InputError
from .runner import MergeResult, run
from .recipe import Recipe

PathLike = Union[str, os.PathLike]


def merge(models: Sequence[PathLike], weights: Optional[Sequence[float]] = None, output: Optional[PathLike] = None,
          *, model_type: str = "encoder", method: str = "linear", base: Optional[PathLike] = None,
          parameters: Optional[dict] = None, dtype: Optional[str] = None, normalize: bool = False,
          max_shard_size: Union[str, int] = "5GB", config_from: Optional[PathLike] = None, force: bool = False,
          dry_run: bool = False, progress: bool = False) -> MergeResult:
    """Merge the checkpoints in ``models`` into the folder ``output``.

    Args:
        models: model folders, single ``.safetensors`` files, or Hugging Face hub ids (from the local cache).
        weights: one weight per model, summing to 1 (``None``: equal weights).
        output: the folder to write; it must not exist unless ``force``.
        model_type: ``encoder`` (embedding model), ``reranker`` or ``decoder``.
        method: the merge method (``linear``: the weighted average).
        base: the base model, for methods that need one.
        parameters: the method's parameters.
        dtype: ``float32``, ``float16`` or ``bfloat16`` (default: each tensor's dtype in the first model).
        normalize: divide the weights by their sum instead of requiring it to be 1.
        max_shard_size: largest safetensors shard, e.g. ``"5GB"``.
        config_from: take config and tokenizer files from this model instead of the first.
        force: replace an existing ``output``.
        dry_run: run every check, write nothing.
        progress: show a progress bar on stderr.

    Returns:
        A :class:`~cocktail.merge.MergeResult` (weights used, plan, files written).

    Raises:
        cocktail.CocktailError: for any bad input; nothing is written then.
    """
    recipe = Recipe.from_models(
        models, weights, output=str(output) if output is not None else None, model_type=model_type,
        merge_method=method, base_model=str(base) if base is not None else None, parameters=dict(parameters or {}),
        dtype=dtype, normalize=normalize, max_shard_size=max_shard_size,
        config_from=str(config_from) if config_from is not None else None,
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


def mix_models_with_data(model_names_or_paths: Sequence[str], model_type: str, example_data=None,
                         temperature: float = 5.0, batch_size: int = 2, max_input_length: Optional[int] = None,
                         neg_number: int = 7, output_path: Optional[str] = None, *, example_ata=None,
                         query_instruction: Optional[str] = None, seed: int = 0, device: Optional[str] = None,
                         task=None, search: bool = False, search_budget: Optional[int] = None,
                         holdout: Optional[float] = None):
    """LM-Cocktail's ``mix_models_with_data``: weights from a few examples, merge, return the model.

    The weights are ``softmax(-loss / temperature)`` of each model's loss on ``example_data`` (see
    :func:`cocktail.few_shot_losses`); with ``search=True`` they are searched for the lowest loss of
    the merged model instead.

    Args:
        model_names_or_paths: model folders or hub ids.
        model_type: ``encoder``, ``reranker`` or ``decoder``.
        example_data: a list of example dicts, or a path to an examples file. (LM-Cocktail's misspelled
            keyword ``example_ata`` is accepted too.)
        temperature: the softmax temperature.
        batch_size: how many queries share in-batch negatives (examples per loss batch for decoders).
        max_input_length: tokens per text (default 512 for encoders and rerankers, 2048 for decoders).
        neg_number: the most negatives per query.
        output_path: where to save the merged model (``None``: not saved).
        query_instruction, seed, device, task, search, search_budget, holdout: see ``cocktail weights``.

    Returns:
        The merged model, loaded as :func:`mix_models` does.
    """
    if example_data is not None and example_ata is not None:
        raise InputError("give example_data or example_ata (its old spelling), not both")
    examples = example_data if example_data is not None else example_ata
    if examples is None:
        raise InputError("mix_models_with_data needs example_data")
    weights_from = {"examples": examples if isinstance(examples, (str, os.PathLike)) else list(examples),
                    "temperature": temperature, "batch_size": batch_size, "neg_number": neg_number,
                    "max_length": max_input_length, "query_instruction": query_instruction, "seed": seed,
                    "device": device, "task": task, "search": search, "holdout": holdout}
    if isinstance(weights_from["examples"], os.PathLike):
        weights_from["examples"] = str(weights_from["examples"])
    if search_budget is not None:
        weights_from["search_budget"] = search_budget
    recipe = Recipe.from_models(model_names_or_paths, None, model_type=model_type, weights_from=weights_from)
    if output_path is not None:
        recipe.output = str(output_path)
        run(recipe, progress=True)
        return load_model(output_path, model_type)
    scratch = Path(tempfile.mkdtemp(prefix="cocktail-mix-"))
    try:
        recipe.output = str(scratch / "merged")
        run(recipe)
        return load_model(scratch / "merged", model_type)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
