"""``CocktailCallback``: mix the model being fine-tuned with its base, from inside a training run.

LM-Cocktail's main advice is "after fine-tuning, mix the new model with its base". This
``transformers.TrainerCallback`` does it at the end of training (and, if asked, at every checkpoint
save) with the same engine as ``cocktail merge``: it reads the live model tensor by tensor, never
changes it, and writes a complete model folder (weights, config, tokenizer, recipe, model card).
It works with ``transformers.Trainer`` and with sentence-transformers' ``SentenceTransformerTrainer``.

This module imports transformers; ``import cocktail`` does not (``cocktail.CocktailCallback`` loads
it on first use).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from transformers import TrainerCallback

from cocktail.api import prepare
from cocktail.errors import InputError
from cocktail.io.memory import open_any
from cocktail.io.output import check_output
from cocktail.merging.methods import get_method
from cocktail.runner import run

EVENTS = ("train_end", "save")


class CocktailCallback(TrainerCallback):
    """Merge the model being trained with ``base`` when training ends (and/or at each save).

    Args:
        base: the base model: a folder, a hub id (from the local cache), or a loaded model.
        weights: ``[w_trained, w_base]`` summing to 1 (default: equal weights, ``[0.5, 0.5]``), or
            ``"examples"`` to compute them from the two models' loss on ``examples`` each time it merges.
        output_dir: where merged models go (default: ``<TrainingArguments.output_dir>/cocktail``).
        on: ``"train_end"`` (default): once, when training ends, into ``output_dir``;
            ``"save"``: at every checkpoint save, into ``output_dir/checkpoint-<step>``;
            ``("save", "train_end")``: both, the final one into ``output_dir/final``.
        examples: the few-shot examples for ``weights="examples"``; with ``method="regmean"`` or
            ``"fisher"`` the examples of the trained model's statistics (the weights then scale them).
        keep: with ``weights="examples"``, the search's keep examples; with ``regmean`` / ``fisher`` the
            examples of the base model's statistics (default: ``examples`` for both).
        model_type: ``encoder``, ``reranker``, ``decoder``, ... (default: read off the config, as for
            ``cocktail merge``).
        method: the merge method (default ``linear``). A method that needs a base model (e.g.
            ``task_arithmetic``, ``ties``) gets ``base`` as its base too.
        parameters: the method's parameters.
        dtype: output dtype (``float32``, ``float16``, ``bfloat16``; default: the model's).
        force: replace existing output folders (otherwise an existing one is an error, reported
            when training begins where it can be known then).
        max_shard_size: largest safetensors shard of each output.
        trust_remote_code: let the models' own code (``auto_map``) run to score ``examples``.

    After training, ``callback.outputs`` lists the folders written, in order, and
    ``callback.results`` the matching :class:`~cocktail.runner.MergeResult` objects.
    Only the main process (``state.is_world_process_zero``) merges.
    """

    def __init__(self, base: Any, weights: Union[Sequence[float], str, None] = None,
                 output_dir: Optional[Union[str, os.PathLike]] = None, on: Union[str, Sequence[str]] = "train_end",
                 *, examples: Any = None, model_type: Optional[str] = None, method: str = "linear",
                 parameters: Optional[dict] = None, dtype: Optional[str] = None, force: bool = False,
                 max_shard_size: Union[str, int] = "5GB", trust_remote_code: bool = False, keep: Any = None):
        events = (on,) if isinstance(on, str) else tuple(on)
        unknown = [e for e in events if e not in EVENTS]
        if not events or unknown:
            raise InputError(f"on must be 'train_end', 'save' or both, got {on!r}")
        if weights is None:
            pass  # equal weights (or none, for methods that take none)
        elif isinstance(weights, str):
            if weights != "examples":
                raise InputError(f"weights must be [w_trained, w_base] or 'examples', got {weights!r}")
            if examples is None:
                raise InputError("weights='examples' needs examples= (a .jsonl file or a list of dicts)")
        elif len(list(weights)) != 2:
            raise InputError(f"got {len(list(weights))} weights for 2 models (the trained model and the base): "
                             "give [w_trained, w_base]")
        data_aware = get_method(method).statistics is not None  # an unknown method is an error now
        if data_aware and examples is None:
            raise InputError(f"merge method {method} fits each layer to the models' statistics on examples: give "
                             f"examples= (the trained model's; keep= for the base's)")
        if examples is not None and weights != "examples" and not data_aware:
            raise InputError("examples are used only with weights='examples' or a data-aware method (regmean, fisher)")
        if keep is not None and examples is None:
            raise InputError("keep= needs examples=")
        self.base = base
        self.weights = weights if weights is None or isinstance(weights, str) else list(weights)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.events = events
        self.examples = examples
        self.keep = keep
        self.model_type = model_type
        self.method = method
        self.parameters = dict(parameters or {})
        self.dtype = dtype
        self.force = force
        self.max_shard_size = max_shard_size
        self.trust_remote_code = trust_remote_code
        self.outputs: list[Path] = []
        self.results: list = []

    # -- where ---------------------------------------------------------------------------------------
    def _root(self, args) -> Path:
        return self.output_dir if self.output_dir is not None else Path(args.output_dir) / "cocktail"

    def final_dir(self, args) -> Path:
        """The folder the merge at the end of training writes."""
        root = self._root(args)
        return root / "final" if "save" in self.events else root

    def save_dir(self, args, step: int) -> Path:
        """The folder the merge at a checkpoint save of ``step`` writes."""
        return self._root(args) / f"checkpoint-{step}"

    # -- events --------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        """Check what can be checked before hours of training: the base opens, the output is free."""
        if not state.is_world_process_zero:
            return
        with open_any(self.base, "base"):
            pass
        if "train_end" in self.events:
            check_output(self.final_dir(args), [], self.force)

    def on_save(self, args, state, control, model=None, **kwargs):
        """With ``on="save"``: merge the model as saved at this step into ``output_dir/checkpoint-<step>``."""
        if "save" in self.events and state.is_world_process_zero:
            self.mix(model, self.save_dir(args, state.global_step), kwargs)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        """With ``on="train_end"``: merge the final model into ``output_dir`` (``output_dir/final`` with saves too)."""
        if "train_end" in self.events and state.is_world_process_zero:
            self.mix(model, self.final_dir(args), kwargs)

    # -- the merge ---------------------------------------------------------------------------------
    def mix(self, model, output: Path, event_kwargs: Optional[dict] = None):
        """Merge ``model`` (as it is now) with the base into ``output``; the model is only read."""
        if model is None:
            raise InputError("CocktailCallback: the trainer passed no model to merge")
        event_kwargs = event_kwargs or {}
        tokenizer = event_kwargs.get("processing_class") or event_kwargs.get("tokenizer")
        if tokenizer is not None and not hasattr(tokenizer, "save_pretrained"):
            tokenizer = None
        method = get_method(self.method)
        method_base = self.base if method.needs_base or method.statistics else None
        recipe, objects = prepare([model, self.base], self.weights, output, model_type=self.model_type,
                                  method=self.method, base=method_base, parameters=self.parameters, dtype=self.dtype,
                                  max_shard_size=self.max_shard_size, examples=self.examples, tokenizer=tokenizer,
                                  trust_remote_code=self.trust_remote_code, keep=self.keep)
        result = run(recipe, force=self.force, objects=objects)
        self.outputs.append(result.output)
        self.results.append(result)
        return result
