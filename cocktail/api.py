"""The Python API: ``cocktail.merge`` (paths, loaded models or state dicts), ``merge_state_dicts``,
and LM-Cocktail's ``mix_models`` / ``mix_models_by_layers``.

All of them build a :class:`~cocktail.recipe.Recipe` and run it on the same streaming engine as the
CLI, so a folder written from Python is byte-identical to one written by ``cocktail merge``.
Models already in memory (``torch.nn.Module``s, state dicts) enter the engine as
:class:`~cocktail.io.memory.MemoryCheckpoint`s: the same checks, the same methods, the same writer.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from cocktail.errors import InputError
from cocktail.io import memory
from cocktail.io.adapters import bases_for
from cocktail.io.checkpoints import TRANSFORMER, Checkpoint, find_weights, resolve
from cocktail.io.statistics_cache import MemoryStatistics, StatisticsSet
from cocktail.merging.engine import output_dtype
from cocktail.merging.methods import get_method
from cocktail.modeling.clone import empty_clone, fill_clone
from cocktail.modeling.loading import load_pretrained
from cocktail.recipe.choices import DATA_AWARE_METHODS
from cocktail.recipe.recipe import Recipe
from cocktail.runner import iter_merged, run

PathLike = Union[str, os.PathLike]
ModelInput = Union[str, os.PathLike, "torch.nn.Module", Mapping[str, "torch.Tensor"]]


def merge(models: Sequence[ModelInput], weights: Union[Sequence[float], str, None] = None,
          output: Optional[PathLike] = None, *, model_type: Optional[str] = None, method: str = "linear",
          base: Optional[ModelInput] = None, parameters: Optional[dict] = None, dtype: Optional[str] = None,
          normalize: bool = False, max_shard_size: Union[str, int] = "5GB", config_from: Optional[PathLike] = None,
          force: bool = False, dry_run: bool = False, progress: bool = False, examples: Any = None,
          tokenizer: Any = None, seed: int = 0, trust_remote_code: bool = False,
          adapter_base: Optional[PathLike] = None, allow_nonfinite: bool = False, keep: Any = None) -> Any:
    """Merge models: folders on disk, hub ids, loaded models or state dicts, mixed freely.

    Args:
        models: the models to merge. Each is a model folder, a single ``.safetensors`` file, a Hugging
            Face hub id (from the local cache), a LoRA adapter folder (PEFT's ``adapter_config.json`` +
            ``adapter_model.safetensors``: its base with the adapter applied), a loaded ``torch.nn.Module``
            (a transformers ``PreTrainedModel`` or a ``SentenceTransformer``) or a state dict
            ``{name: tensor}``. Loaded models are read in place, one tensor at a time, and never modified.
        weights: one weight per model, summing to 1 (``None``: equal weights), or ``"examples"`` to
            compute them from the models' loss on ``examples`` (LM-Cocktail's few-shot weights, computed
            by the engine as for ``cocktail merge --examples``, loaded models included). A weight may
            also be a per-tensor schedule: a list of numbers (a gradient over the layers) or a list of
            ``{"filter": regex, "value": ...}`` entries (see the README).
        output: the folder to write; it must not exist unless ``force``. It is written exactly as
            ``cocktail merge`` writes it (weights, config and tokenizer files, recipe, model card).
        model_type: ``encoder`` (embedding model), ``reranker``, ``decoder``, ``llm-embedder`` or
            ``llm-reranker`` (default: what the models' config.json says, ``encoder`` when none says).
        method: the merge method (``linear``: the weighted average; see ``cocktail.METHODS``).
        base: the base model (same kinds as ``models``), for methods that need one.
        parameters: the method's parameters, e.g. ``{"density": 0.5}``.
        dtype: ``float32``, ``float16`` or ``bfloat16`` (default: each tensor's dtype in the first model).
        normalize: divide the weights by their sum instead of requiring it to be 1.
        max_shard_size: largest safetensors shard of ``output``, e.g. ``"5GB"``.
        config_from: take config and tokenizer files from this folder instead of the first model.
        force: replace an existing ``output``.
        dry_run: run every check, merge and write nothing (returns a ``MergeResult``).
        progress: show a progress bar on stderr.
        examples: the few-shot examples for ``weights="examples"``: a ``.jsonl`` path, a list of dicts, or
            a dict of few-shot options (``temperature``, ...) holding them under ``"examples"``. For the
            data-aware methods (``regmean``, ``fisher``) the examples every model's statistics come from
            (the weights then stay numbers, or equal, and scale each model's statistics).
        keep: examples of what the merge must keep (same forms as ``examples``): with ``weights="examples"``
            the search's keep set; with ``regmean`` / ``fisher`` the examples of the ``base`` model's
            statistics (the base being one of ``models``).
        tokenizer: saved into ``output`` when the first model is a transformers model held in memory
            (otherwise its tokenizer files come from the first model given as a folder).
        seed: seed of random methods (``dare_*``); recorded in the output's recipe.
        trust_remote_code: let a model folder's own code (``auto_map``) run when weights come from
            examples; without it such a model is refused (merging itself never runs model code).
        adapter_base: the model the LoRA adapter folders among ``models`` apply to (default: the
            ``base_model_name_or_path`` of each adapter's config).
        allow_nonfinite: write ``output`` even if a tensor in it would hold NaN or infinite values
            (an input holding them, a ``dtype`` overflow, a huge parameter); refused by default.

    Returns:
        What the first model is: for a loaded model, a new model of the same class holding the merged
        weights (a ``torch.nn.Module``); for a state dict, the merged state dict; for a path or hub
        id, a :class:`~cocktail.runner.MergeResult` (weights used, plan, files written), and then
        ``output`` is required. ``dry_run`` always returns a ``MergeResult``.

    Raises:
        cocktail.CocktailError: for any bad input (with the message the CLI prints); nothing is written then.

    Example::

        merged = cocktail.merge([model, "BAAI/bge-base-en-v1.5"], weights=[0.5, 0.5])
        cocktail.merge(["./ft", "./base"], weights=[0.5, 0.5], output="./mixed")
    """
    models = _as_list(models)
    recipe, objects = prepare(models, weights, output, model_type=model_type, method=method, base=base,
                              parameters=parameters, dtype=dtype, normalize=normalize,
                              max_shard_size=max_shard_size, config_from=config_from, examples=examples,
                              tokenizer=tokenizer, seed=seed, trust_remote_code=trust_remote_code,
                              adapter_base=adapter_base, allow_nonfinite=allow_nonfinite, keep=keep)
    first = models[0]
    if dry_run or memory.is_path(first):
        return run(recipe, force=force, dry_run=dry_run, progress=progress, objects=objects)
    first_checkpoint = objects[recipe.models[0].path]
    if output is not None:
        result = run(recipe, force=force, progress=progress, objects=objects)
        tensors = _read_folder(result.output)
    else:
        tensors = ((p.component, p.name, t) for p, t in iter_merged(recipe, objects=objects))
    if memory.is_module(first):
        return _into_module(first, first_checkpoint, tensors, dtype)
    return _into_state_dict(first, objects, tensors)


def prepare(models: Sequence[ModelInput], weights: Union[Sequence[float], str, None] = None,
            output: Optional[PathLike] = None, *, model_type: Optional[str] = None, method: str = "linear",
            base: Optional[ModelInput] = None, parameters: Optional[dict] = None, dtype: Optional[str] = None,
            normalize: bool = False, max_shard_size: Union[str, int] = "5GB",
            config_from: Optional[PathLike] = None, examples: Any = None, tokenizer: Any = None,
            seed: int = 0, trust_remote_code: bool = False,
            adapter_base: Optional[PathLike] = None, allow_nonfinite: bool = False,
            keep: Any = None) -> tuple[Recipe, dict]:
    """The :class:`Recipe` for a merge of any inputs, and the in-memory models it names.

    Models on disk appear in the recipe by their path; models in memory as
    ``<in memory: Class, model i>``, a name that maps to its opened model in the returned dict.
    ``cocktail.run(recipe, objects=objects)`` then writes exactly what :func:`merge` writes.
    Arguments are those of :func:`merge`.
    """
    models = _as_list(models)
    labels = [str(m) if memory.is_path(m) else _memory_label(m, f"model {i + 1}") for i, m in enumerate(models)]
    objects: dict = {}  # recipe name -> opened in-memory model
    side_from = _side_files_source(models) if not memory.is_path(models[0]) else None
    for i, value in enumerate(models):
        if not memory.is_path(value):
            objects[labels[i]] = memory.open_any(value, labels[i], tokenizer=tokenizer if i == 0 else None,
                                                 side_files_from=side_from if i == 0 else None)
    base_label = None
    data_aware = method in DATA_AWARE_METHODS
    if base is not None:
        # a data-aware merge's base among the models is that model (its statistics come from keep=)
        base_label = next((label for label, model in zip(labels, models) if model is base), None) \
            if data_aware and not memory.is_path(base) else None
        if base_label is None:
            base_label = str(base) if memory.is_path(base) else _memory_label(base, "base")
            if not memory.is_path(base):
                objects[base_label] = memory.open_any(base, base_label)
    weights_from = None
    if isinstance(weights, str):
        if weights != "examples" or data_aware:
            raise InputError(f"weights must be numbers, one per model{'' if data_aware else ', or examples'}; "
                             f"got {weights!r}" + (f" (merge method {method} takes its examples as examples=)"
                                                   if data_aware else ""))
        weights_from, weights = examples_request(examples), None
    elif examples is not None and data_aware:
        weights_from = examples_request(examples)
    elif examples is not None:
        raise InputError("examples are used only with weights='examples' or a data-aware method "
                         f"({', '.join(DATA_AWARE_METHODS)})")
    if keep is not None:
        if weights_from is None:
            raise InputError("keep= needs examples= (and weights='examples' or a data-aware method)")
        weights_from["keep"] = str(keep) if isinstance(keep, (str, os.PathLike)) else list(keep)
    if weights_from is not None and any(memory.is_state_dict(m) for m in models):
        raise InputError("examples need models cocktail can run (folders or loaded models), not state dicts")
    recipe = Recipe.from_models(
        labels, None if weights is None else list(weights), bases_for(models, adapter_base),
        output=str(output) if output is not None else None,
        model_type=model_type, merge_method=method, base_model=base_label, parameters=dict(parameters or {}),
        dtype=dtype, normalize=normalize, max_shard_size=max_shard_size,
        config_from=str(config_from) if config_from is not None else None, seed=seed, weights_from=weights_from,
        trust_remote_code=trust_remote_code, allow_nonfinite=allow_nonfinite,
    )
    return recipe, objects


def merge_state_dicts(state_dicts: Sequence[Mapping[str, "torch.Tensor"]], weights: Optional[Sequence[float]] = None,
                      method: str = "linear", base: Optional[Mapping[str, "torch.Tensor"]] = None, *,
                      dtype: Optional[str] = None, normalize: bool = False, seed: int = 0,
                      statistics: Optional[Sequence[Mapping[str, "torch.Tensor"]]] = None, **parameters: Any) -> dict:
    """Merge state dicts ``{name: tensor}`` into a new state dict, with the engine of ``cocktail merge``.

    Args:
        state_dicts: the state dicts to merge (never modified).
        weights: one weight per state dict, summing to 1 (``None``: equal weights).
        method: the merge method (``linear``, or any name in ``cocktail.METHODS``).
        base: the base state dict, for methods that need one (``task_arithmetic``, ``ties``, ...).
        dtype: ``float32``, ``float16`` or ``bfloat16`` (default: each tensor's dtype in the first).
        normalize: divide the weights by their sum instead of requiring it to be 1.
        seed: the seed of methods that draw random numbers.
        statistics: for the data-aware methods, one ``{name: tensor}`` per state dict (state dicts cannot
            be run on examples): for ``regmean`` the Gram matrix of each ``nn.Linear`` weight's inputs
            (in×in, the weight stored out×in), for ``fisher`` the diagonal Fisher of each tensor (its
            shape). Tensors without statistics are merged linearly.
        **parameters: the method's parameters, e.g. ``density=0.5``.

    Returns:
        A new state dict with the first state dict's names and order; no tensor is shared with an input.

    Raises:
        cocktail.CocktailError: names, shapes or dtypes that do not match, bad weights, unknown method.
    """
    state_dicts = _as_list(state_dicts)
    for i, state in enumerate(state_dicts):
        if not memory.is_state_dict(state):
            raise InputError(f"model {i + 1}: expected a state dict {{name: tensor}}, got {type(state).__name__}")
    if base is not None and not memory.is_state_dict(base):
        raise InputError(f"base: expected a state dict {{name: tensor}}, got {type(base).__name__}")
    if statistics is None:
        return merge(state_dicts, weights, method=method, base=base, parameters=parameters, dtype=dtype,
                     normalize=normalize, seed=seed)
    kind = get_method(method).statistics
    if kind is None:
        raise InputError(f"merge method {method} takes no statistics (the data-aware methods: "
                         f"{', '.join(DATA_AWARE_METHODS)})")
    statistics = list(statistics)
    if len(statistics) != len(state_dicts):
        raise InputError(f"got statistics for {len(statistics)} models, but {len(state_dicts)} state dicts: "
                         f"give one {{name: tensor}} per state dict")
    given = StatisticsSet(kind, [MemoryStatistics(dict(found), f"statistics of model {i + 1}")
                                 for i, found in enumerate(statistics)])
    recipe, objects = prepare(state_dicts, weights, method=method, base=base, parameters=parameters, dtype=dtype,
                              normalize=normalize, seed=seed)
    tensors = ((p.component, p.name, t) for p, t in iter_merged(recipe, objects=objects, statistics=given))
    return _into_state_dict(state_dicts[0], objects, tensors)


def _as_list(models) -> list:
    if memory.is_path(models) or memory.is_module(models) or memory.is_state_dict(models):
        raise InputError("models must be a list of models (give [model_a, model_b])")
    models = list(models)
    if not models:
        raise InputError("no models given")
    return models


def _memory_label(value, where: str) -> str:
    """How a model held in memory is named in messages and in the recipe: ``<in memory: BertModel, model 1>``."""
    return f"{memory.describe(value)[:-1]}, {where}>"


def _side_files_source(models: list) -> Optional[Path]:
    """Where a model held in memory takes the files it cannot write itself: the first model on disk."""
    for value in models:
        if memory.is_path(value):
            path = resolve(str(value))
            return path.parent if path.is_file() else path
    return None


def examples_request(examples: Any) -> dict:
    """The recipe's ``weights_from`` for ``weights="examples"``: the examples (a file or a list of
    dicts), or a dict of few-shot options that holds them under ``"examples"``."""
    if examples is None:
        raise InputError("weights='examples' needs examples= (a .jsonl file or a list of dicts)")
    if isinstance(examples, Mapping):
        if "examples" not in examples:
            raise InputError("examples= as a dict holds few-shot options and the examples under 'examples'")
        request = dict(examples)
    else:
        request = {"examples": examples}
    found = request["examples"]
    request["examples"] = str(found) if isinstance(found, (str, os.PathLike)) else list(found)
    keep = request.get("keep")
    if keep is not None:
        request["keep"] = str(keep) if isinstance(keep, (str, os.PathLike)) else list(keep)
    return request


def _read_folder(folder: Path):
    """``(component, name, tensor)`` of every tensor of a written folder, one at a time."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        written = Checkpoint.open(folder)
    else:  # merged state dicts with no config to copy: the weights alone
        written = Checkpoint(str(folder), folder, {}, {TRANSFORMER: find_weights(folder, TRANSFORMER, "", True)},
                             sentence_transformers=False)
    with written:
        for key in written.components:
            for name in written.infos(key):
                yield key, name, written.read(key, name)


def _into_module(first, checkpoint, tensors, dtype: Optional[str]):
    """A new model of the first model's class holding the merged tensors; ``first`` is not touched."""
    clone = empty_clone(first)
    if dtype is not None:
        clone = clone.to(output_dtype(dtype))
    return fill_clone(clone, first, checkpoint, tensors)


def _into_state_dict(first: Mapping, objects: dict, tensors) -> dict:
    """The merged state dict, in the first state dict's order, sharing no memory with any input."""
    input_storages = {t.untyped_storage().data_ptr()
                      for c in objects.values() if isinstance(c, memory.MemoryCheckpoint)
                      for comp in c.components.values() for t in comp.tensors.values()}
    merged = {}
    for _, name, tensor in tensors:
        merged[name] = tensor.clone() if tensor.untyped_storage().data_ptr() in input_storages else tensor
    order = [k for k in first if k in merged] + [k for k in merged if k not in first]
    return {k: merged[k] for k in order}


def load_model(path: PathLike, model_type: str, trust_remote_code: bool = False):
    """Load a merged folder with the transformers class LM-Cocktail uses for ``model_type`` (a model
    with its own code, ``auto_map``, needs ``trust_remote_code=True``)."""
    return load_pretrained(path, model_type, trust_remote_code)


def _mix(model_names_or_paths, model_type, weights, output_path, trust_remote_code: bool):
    if output_path is not None:
        merge(model_names_or_paths, weights, output_path, model_type=model_type, progress=True)
        return load_model(output_path, model_type, trust_remote_code)
    scratch = Path(tempfile.mkdtemp(prefix="cocktail-mix-"))
    try:
        merge(model_names_or_paths, weights, scratch / "merged", model_type=model_type)
        model = load_model(scratch / "merged", model_type, trust_remote_code)
        return model
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def mix_models(model_names_or_paths: Sequence[str], model_type: str, weights: Sequence[float],
               output_path: Optional[str] = None, *, trust_remote_code: bool = False):
    """LM-Cocktail's ``mix_models``: merge with the given weights and return the loaded model.

    Args:
        model_names_or_paths: model folders or hub ids.
        model_type: ``decoder``, ``encoder`` or ``reranker``.
        weights: one weight per model, summing to 1.
        output_path: where to save the merged model (encoders get sentence-transformers files).
        trust_remote_code: load a merged model that has its own code (``auto_map``).

    Returns:
        The merged model, loaded with ``AutoModel`` (encoder), ``AutoModelForSequenceClassification``
        (reranker) or ``AutoModelForCausalLM`` (decoder).
    """
    return _mix(model_names_or_paths, model_type, weights, output_path, trust_remote_code)


def mix_models_by_layers(model_names_or_paths: Sequence[str], model_type: str, weights: Sequence[float],
                         output_path: Optional[str] = None, *, trust_remote_code: bool = False):
    """LM-Cocktail's ``mix_models_by_layers``: same as :func:`mix_models` (cocktail always streams
    tensor by tensor, so there is no separate low-memory path)."""
    return _mix(model_names_or_paths, model_type, weights, output_path, trust_remote_code)


def mix_models_with_data(model_names_or_paths: Sequence[str], model_type: str, example_data=None,
                         temperature: float = 5.0, batch_size: int = 2, max_input_length: Optional[int] = None,
                         neg_number: int = 7, output_path: Optional[str] = None, *, example_ata=None,
                         query_instruction: Optional[str] = None, seed: int = 0, device: Optional[str] = None,
                         task=None, search: bool = False, search_budget: Optional[int] = None,
                         holdout: Optional[float] = None, trust_remote_code: bool = False, keep=None,
                         keep_tolerance: Optional[float] = None, keep_weight: Optional[float] = None,
                         search_space: str = "models", score_dtype: Optional[str] = None,
                         device_map: Optional[str] = None, max_memory: Union[str, dict, None] = None,
                         offload_folder: Optional[PathLike] = None):
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
        keep, keep_tolerance, keep_weight, search_space: the keep set and the search space (see
            :func:`cocktail.few_shot_losses`).
        score_dtype, device_map, max_memory, offload_folder: how the models are run to score the examples
            (dtype; spread over devices and disk): see :func:`cocktail.few_shot_losses`.
        trust_remote_code: let the models' own code (``auto_map``) run to score the examples.

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
                    "device": device, "task": task, "search": search, "holdout": holdout,
                    "keep": keep, "keep_tolerance": keep_tolerance, "keep_weight": keep_weight,
                    "search_space": search_space, "score_dtype": score_dtype, "device_map": device_map,
                    "max_memory": max_memory,
                    "offload_folder": os.fspath(offload_folder) if offload_folder is not None else None}
    for key in ("examples", "keep"):
        if isinstance(weights_from[key], os.PathLike):
            weights_from[key] = str(weights_from[key])
        elif isinstance(weights_from[key], tuple):
            weights_from[key] = list(weights_from[key])
    if search_budget is not None:
        weights_from["search_budget"] = search_budget
    recipe = Recipe.from_models(model_names_or_paths, None, model_type=model_type, weights_from=weights_from,
                                trust_remote_code=trust_remote_code)
    if output_path is not None:
        recipe.output = str(output_path)
        run(recipe, progress=True)
        return load_model(output_path, model_type, trust_remote_code)
    scratch = Path(tempfile.mkdtemp(prefix="cocktail-mix-"))
    try:
        recipe.output = str(scratch / "merged")
        run(recipe)
        return load_model(scratch / "merged", model_type, trust_remote_code)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
