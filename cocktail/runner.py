"""Run a Recipe: open checkpoints, plan, resolve weights, stream every tensor through the method
into the writer, and put the output folder in place.

This is the one path every door (CLI, Python API, YAML recipes) goes through.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from cocktail.errors import InputError, few_names, option
from cocktail.errors import warn as warn_user
from cocktail.fewshot.request import FewShotRequest, StatisticsRequest
from cocktail.io import provenance, sidefiles
from cocktail.io.adapters import AdapterCheckpoint
from cocktail.io.checkpoints import TRANSFORMER, CheckpointLike, read_config, transformer_dir
from cocktail.io.memory import MemoryCheckpoint, open_any, share_model_type
from cocktail.io.output import OutputFolder, check_output
from cocktail.merging.engine import (
    finite_checked,
    merged_tensors,
    nonfinite_message,
    output_dtype,
    shard_counts,
    write_tensors,
)
from cocktail.merging.methods import Method, get_method
from cocktail.merging.plan import Plan, PlannedTensor, build_plan
from cocktail.merging.tensor_settings import check_method_use, has_weight_schedules, resolve_settings
from cocktail.merging.weights import fixed_weights
from cocktail.modeling.loading import embedding_rows
from cocktail.recipe.choices import MODEL_TYPES
from cocktail.recipe.model_type import settle as settle_model_type
from cocktail.recipe.recipe import Recipe, recipe_path
from cocktail.recipe.sizes import parse_size
from cocktail.version import __version__


@dataclass
class MergeResult:
    """What a merge did: the weights it used, its plan, where it wrote (``None`` for a dry run)."""

    recipe: Recipe
    weights: list  # per model: a number, a per-tensor schedule, or None (methods without weights)
    plan: Plan
    output: Optional[Path] = None
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False
    few_shot: Optional[dict] = None  # losses and details when the weights came from examples
    shards: dict = field(default_factory=dict)  # safetensors files per component folder ("." the top one)

    def __repr__(self) -> str:  # print(cocktail.merge(...)): what was done, not every planned tensor
        done = "dry run, nothing written" if self.dry_run else f"wrote {self.output}" if self.output else "in memory"
        weights = ", ".join(provenance.format_weight(w) for w in self.weights)
        counts = self.plan.summary()
        return (f"MergeResult({done}; {self.recipe.merge_method} of {len(self.weights)} models, weights "
                f"[{weights}]: {counts['merged_tensors']} tensors merged, {counts['copied_tensors']} copied, "
                f"{counts['parameters']:,} parameters; {len(self.warnings)} warnings; .summary() for the rest)")

    __str__ = __repr__

    def summary(self) -> dict:
        return {
            "output": str(self.output) if self.output else None,
            "dry_run": self.dry_run,
            "method": self.recipe.merge_method,
            "model_type": self.recipe.model_type,
            "weights": self.weights,
            "method_parameters": dict(self.recipe.parameters),
            "seed": self.recipe.seed,
            **self.plan.summary(),
            "shards": dict(self.shards),
            "files": self.files,
            "warnings": self.warnings,
            **({"weights_from": self.few_shot} if self.few_shot else {}),
        }


def check_recipe(recipe: Recipe) -> Method:
    """Checks that need no file: model count, model type, method, dtype, shard size."""
    if not recipe.models:
        raise InputError("no models given")
    check_paths(recipe)
    if recipe.model_type is not None and recipe.model_type not in MODEL_TYPES:
        raise InputError(f"unknown model type {recipe.model_type!r} (choose from {', '.join(MODEL_TYPES)})")
    method = get_method(recipe.merge_method)
    check_method_use(method, [m.weight for m in recipe.models], recipe.base_model, recipe.parameters, recipe.seed,
                     recipe.model_parameters)
    output_dtype(recipe.dtype)
    parse_size(recipe.max_shard_size)
    return method


def check_paths(recipe: Recipe) -> None:
    """Every path of the recipe is a name cocktail can write into its recipe file: not empty, valid
    UTF-8 (a path of invalid bytes fails here, not after the whole merge)."""
    for what, path in recipe.read_paths() + [("output", recipe.output)]:
        if path is None or not isinstance(path, (str, os.PathLike)):
            continue
        text = os.fspath(path)
        if isinstance(text, bytes):
            text = os.fsdecode(text)
        if not text.strip():
            raise InputError(f"the {what} path is empty")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"the {what} path {ascii(text)} is not valid UTF-8: rename it") from None


def open_checkpoints(recipe: Recipe, objects: Optional[dict] = None
                     ) -> tuple[list[CheckpointLike], Optional[CheckpointLike]]:
    """Open the recipe's models and base; ``objects`` maps a model's name in the recipe to the model
    itself when it is in memory (a module, a state dict or an already opened checkpoint)."""
    objects = objects or {}
    opened: list[CheckpointLike] = []
    try:
        for entry in recipe.models:
            opened.append(open_any(objects.get(entry.path, entry.path), adapter_base=entry.base))
        base = open_any(objects.get(recipe.base_model, recipe.base_model)) if recipe.base_model else None
    except BaseException:
        for ckpt in opened:
            ckpt.close()
        raise
    share_model_type(opened + [base])
    return opened, base


def resolve_weights(recipe: Recipe, method: Method) -> tuple[list, list[str]]:
    """The given weight of each model, and any warnings about them (weights from examples are
    computed by :func:`prepare` once the models are open).

    A weight is a number, a per-tensor schedule (checked per tensor by ``resolve_settings`` once the
    plan is known), or ``None`` for methods that use no weights.
    """
    if not method.uses_weights:
        return [None] * len(recipe.models), []
    if has_weight_schedules(recipe.weights):
        return list(recipe.weights), []
    return fixed_weights(recipe.weights, len(recipe.models), recipe.normalize, method.weights_sum_to_one)


@dataclass
class Prepared:
    """A recipe checked and opened: its plan, the weights and per-tensor settings to merge with."""

    recipe: Recipe
    method: Method
    plan: Plan
    weights: list
    settings: list
    messages: list[str]
    few_shot: Optional[dict] = None  # how weights from examples were computed (for provenance)
    shards: dict = field(default_factory=dict)  # safetensors files per component folder
    statistics: Optional[object] = None  # a data-aware method's StatisticsSet (io/statistics_cache.py)
    ridged: list = field(default_factory=list)  # the layers a RegMean solve had to regularise

    def tensors(self, on_tensor: Optional[Callable[[PlannedTensor], None]] = None, reuse: bool = False
                ) -> Iterator[tuple[PlannedTensor, torch.Tensor]]:
        """The merged tensors, one at a time; ``reuse``: the caller is done with each before the next
        (a tensor may then be overwritten by a later one, see :func:`merged_tensors`)."""
        return merged_tensors(self.plan, self.method, self.weights, self.recipe.parameters, on_tensor,
                              settings=self.settings, seed=self.recipe.seed, reuse=reuse,
                              statistics=self.statistics, ridged=self.ridged)

    def ridge_message(self) -> Optional[str]:
        """What the merge says when some RegMean layers needed a ridge to be solved (``None``: none did)."""
        if not self.ridged:
            return None
        one = len(self.ridged) == 1
        return (f"{len(self.ridged)} layer{'' if one else 's'} needed a small ridge to be solved (their inputs on "
                f"the examples span fewer directions than the layer has: more or longer examples, or a lower "
                f"alpha, avoid it; the unseen directions are averaged linearly): {few_names(self.ridged)}")


@contextmanager
def prepare(recipe: Recipe, *, objects: Optional[dict] = None, on_warning: Optional[Callable[[str], None]] = None,
            progress: bool = False, before_weights: Optional[Callable[[Plan], None]] = None,
            compute_weights: bool = True, statistics=None) -> Iterator[Prepared]:
    """Check ``recipe``, open its models, plan, and resolve every weight (fixed, or from examples);
    the models stay open inside the ``with`` block.

    ``before_weights(plan)`` runs once the plan is known and before weights from examples are
    computed (which takes time): :func:`run` checks the output location there. With
    ``compute_weights=False`` weights from examples are not computed (:func:`check`). A data-aware
    method takes ``statistics`` given in memory (a StatisticsSet) instead of computing them from examples.
    """
    warn = on_warning or warn_user
    method = check_recipe(recipe)
    data_aware = method.statistics is not None  # its examples feed statistics; the weights stay as given
    searched = bool((recipe.weights_from or {}).get("search"))  # ... unless searched (with those statistics)
    if not recipe.weights_from or (data_aware and not searched):
        weights, weight_warnings = resolve_weights(recipe, method)
    checkpoints, base = open_checkpoints(recipe, objects)
    try:
        recipe = replace(recipe, model_type=settle_model_type(recipe.model_type, checkpoints[0]))
        few_shot = statistics_request = None
        if data_aware and statistics is not None:
            if recipe.weights_from:
                raise InputError("give statistics or examples to compute them from, not both")
        elif data_aware:  # options and examples are checked now, before any tensor is read
            statistics_request = StatisticsRequest(recipe, method)
        if recipe.weights_from and (searched or not data_aware) and statistics is None:
            few_shot = FewShotRequest(recipe, method)
            weights, weight_warnings = [], []
        plan = build_plan(checkpoints, base, output_dtype(recipe.dtype))
        check_config_from(recipe, plan)
        if before_weights is not None:
            before_weights(plan)
        if (few_shot is not None or statistics_request is not None) and not compute_weights:
            yield Prepared(recipe, method, plan, [], [], [])  # check() stops here: every input is checked
            return
        if statistics_request is not None:
            statistics = statistics_request.run(plan, progress=progress)
        if few_shot is not None:  # computed on these (possibly in-memory) models
            weights, weight_warnings = few_shot.run(plan, progress=progress, statistics=statistics)
        elif statistics is not None:
            weight_warnings = weight_warnings + statistics.notes
        settings, setting_warnings = resolve_settings(plan, method, weights, recipe.parameters, recipe.normalize,
                                                     recipe.model_parameters)
        shards, oversized = shard_counts(plan, parse_size(recipe.max_shard_size))
        if oversized:
            one = len(oversized) == 1
            plan_notes = [f"{len(oversized)} tensor{'' if one else 's'} larger than max_shard_size "
                          f"{recipe.max_shard_size}: {few_names(oversized)} (each is written in a file of its own)"]
        else:
            plan_notes = []
        messages = weight_warnings + setting_warnings + plan.notes + plan_notes
        for message in messages:
            warn(message)
        yield Prepared(recipe, method, plan, weights, settings, messages,
                       few_shot.provenance() if few_shot else None, shards, statistics)
    finally:
        if statistics is not None:
            statistics.close()
        for ckpt in checkpoints + ([base] if base else []):
            ckpt.close()


def check(recipe: Recipe, *, on_warning: Optional[Callable[[str], None]] = None) -> None:
    """Every check :func:`run` makes before it merges (models opened, plan built, weights checked),
    without merging, writing or computing weights from examples: what ``cocktail recipe`` runs, so it
    refuses what ``cocktail run`` would refuse."""
    with prepare(recipe, on_warning=on_warning, compute_weights=False):
        pass


def iter_merged(recipe: Recipe, *, objects: Optional[dict] = None, on_warning: Optional[Callable[[str], None]] = None,
                statistics=None) -> Iterator[tuple[PlannedTensor, torch.Tensor]]:
    """Run ``recipe`` in memory: the same checks as :func:`run`, then yield ``(planned, tensor)`` for
    every output tensor, in plan order, one at a time (no folder is written; ``output`` is ignored).
    A data-aware method may be given its ``statistics`` in memory (see :func:`prepare`).

    Every float tensor is checked for NaN and infinity as :func:`run` checks what it writes: without
    ``allow_nonfinite`` the first one holding them ends the yielding, the rest are still checked, and
    an :class:`InputError` names them all; with it they are yielded and a warning names them."""
    nonfinite: list[str] = []
    with prepare(recipe, objects=objects, on_warning=on_warning, statistics=statistics) as prepared:
        yield from finite_checked(prepared.tensors(), recipe.allow_nonfinite, nonfinite)
        if prepared.ridge_message():
            (on_warning or warn_user)(prepared.ridge_message())
    if nonfinite and not recipe.allow_nonfinite:
        raise InputError(f"{nonfinite_message(nonfinite)}; nothing was returned "
                         f"({option('allow_nonfinite')} returns them anyway)")
    if nonfinite:
        (on_warning or warn_user)(f"{nonfinite_message(nonfinite)}; returned as {option('allow_nonfinite')} asks")


def run(recipe: "Recipe | str | os.PathLike", *, force: bool = False, dry_run: bool = False, progress: bool = False,
        on_warning: Optional[Callable[[str], None]] = None, verify: bool = False,
        objects: Optional[dict] = None, recipe_file: "Optional[str | os.PathLike]" = None,
        trust_remote_code: bool = False) -> MergeResult:
    """Run ``recipe`` (a Recipe, or the path of a YAML recipe file or of a merged folder): check everything, then stream the
    merge into its output folder.

    With ``dry_run`` every check runs (inputs, compatibility, weights, output location) and nothing
    is written. With ``verify`` the inputs' weight files are hashed first and compared with the
    recipe's provenance (a merged folder's ``cocktail_recipe.yaml``); any change refuses the run.
    Warnings go to ``on_warning`` (default: Python warnings). ``objects`` holds the in-memory models
    named in the recipe (see :func:`open_checkpoints`); ``recipe_file`` is the file the recipe was read
    from, which the output must not hold. ``trust_remote_code`` lets the models' own code run; a
    recipe file that asks for it is refused without it (a recipe cannot turn it on).
    """
    if isinstance(recipe, (str, os.PathLike)):
        recipe_file = recipe_path(recipe)
        recipe = Recipe.from_yaml(recipe_file, trust_remote_code=trust_remote_code)
    elif trust_remote_code:
        recipe = replace(recipe, trust_remote_code=True)
    check_recipe(recipe)
    if verify:
        provenance.verify_inputs(recipe)
    if not dry_run and not recipe.output:
        raise InputError("no output folder given")
    target: Optional[Path] = None

    def check_target(plan: Plan) -> None:  # refuse a bad output before any time is spent on weights
        nonlocal target
        if recipe.output:
            every = plan.checkpoints + ([plan.base] if plan.base else [])
            folders = [c.root for c in every] + [c.folder for c in every if isinstance(c, AdapterCheckpoint)]
            if recipe.config_from:
                folders.append(side_file_source(recipe, plan))
            read = [path for _, path in recipe.read_paths()] + ([recipe_file] if recipe_file is not None else [])
            target = check_output(recipe.output, folders, force, plan.output_bytes, read=read)

    with prepare(recipe, objects=objects, on_warning=on_warning, progress=progress,
                 before_weights=check_target) as prepared:
        recipe = prepared.recipe  # with its model type settled
        result = MergeResult(recipe, prepared.weights, prepared.plan, target, warnings=prepared.messages,
                             dry_run=dry_run, few_shot=prepared.few_shot, shards=prepared.shards)
        if not dry_run:
            result.files, nonfinite, hashes, side_hashes = _write(prepared, target, force, progress)
            if prepared.ridge_message():
                (on_warning or warn_user)(prepared.ridge_message())
                result.warnings.append(prepared.ridge_message())
            for message in (provenance.changed_inputs(recipe.provenance, hashes)
                            + provenance.changed_side_files(recipe.provenance, side_hashes)):
                (on_warning or warn_user)(message)
                result.warnings.append(message)
            if nonfinite:  # written only with allow_nonfinite; refused otherwise
                message = f"{nonfinite_message(nonfinite)}; written as {option('allow_nonfinite')} asks"
                (on_warning or warn_user)(message)
                result.warnings.append(message)
        return result



def _write(prepared: Prepared, target: Path, force: bool, progress: bool
           ) -> tuple[list[str], list[str], list[dict], dict[str, str]]:
    """Write the merge into ``target``: ``(files written, tensors written with NaN or inf values, the
    inputs' sha256, the sha256 of the side files copied)``."""
    recipe, plan = prepared.recipe, prepared.plan
    every = plan.checkpoints + ([plan.base] if plan.base else [])
    hasher = provenance.InputHasher(every)
    try:
        with OutputFolder(target, force) as folder:
            files, nonfinite = write_tensors(plan, lambda on: prepared.tensors(on, reuse=True), folder.tmp,
                                             parse_size(recipe.max_shard_size),
                                             prepared.method.elementwise, progress, recipe.allow_nonfinite)
            side_files, side_hashes = _write_side_files(recipe, plan, folder.tmp)
            files += side_files
            hashes = hasher.result()
            copied_from = (plan.checkpoints[0].source if isinstance(plan.checkpoints[0], MemoryCheckpoint)
                           and not recipe.config_from else str(side_file_source(recipe, plan)))
            files += _write_provenance(recipe, plan, prepared.weights, hashes, folder.tmp, prepared.few_shot,
                                       {"from": copied_from, "sha256": side_hashes},
                                       prepared.statistics.provenance if prepared.statistics else None)
            folder.commit()
    except BaseException:
        hasher.cancel()
        raise
    return sorted(files), nonfinite, hashes, side_hashes


def side_file_source(recipe: Recipe, plan: Plan) -> Path:
    """The folder the output's config, tokenizer and other side files come from."""
    return sidefiles.side_file_folder(recipe.config_from, plan.checkpoints[0].root)


#: Config values that fix the shapes of the weights: a config_from must agree on each it has.
CONFIG_FIT_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                   "intermediate_size", "vocab_size", "max_position_embeddings", "type_vocab_size", "n_embd",
                   "n_layer", "n_head", "d_model", "head_dim", "tie_word_embeddings")


def check_config_from(recipe: Recipe, plan: Plan) -> None:
    """Before anything is merged: ``config_from`` exists and has a valid ``config.json`` where the
    merged weights go (the first model's layout), so the output's config sits beside its weights."""
    if not recipe.config_from:
        return
    source = side_file_source(recipe, plan)
    ours = plan.checkpoints[0].components[TRANSFORMER].rel_dir
    theirs = transformer_dir(source)
    if theirs != ours:
        where = lambda rel: f"in {rel}/" if rel else "in the top folder"  # noqa: E731
        raise InputError(f"config_from {recipe.config_from} keeps its config {where(theirs)}, but the merged "
                         f"weights go {where(ours)} like the first model's: give a config_from laid out the same way")
    config = read_config(source / ours / "config.json", required=True, root=source)
    first = plan.checkpoints[0].config
    differ = [f"{key} {config[key]!r} vs {first[key]!r}" for key in CONFIG_FIT_KEYS
              if key in config and key in first and config[key] != first[key]]
    rows = embedding_rows(plan)
    embedding = next((t.shape for t in plan.tensors if t.component == TRANSFORMER and len(t.shape) == 2
                      and t.shape[0] == rows), None)
    if rows is not None and isinstance(config.get("vocab_size"), int) and config["vocab_size"] != rows:
        differ.append(f"vocab_size {config['vocab_size']} vs {rows} embedding rows")
    if embedding is not None and isinstance(config.get("hidden_size"), int) and config["hidden_size"] != embedding[1]:
        differ.append(f"hidden_size {config['hidden_size']} vs embeddings of width {embedding[1]}")
    if differ:
        raise InputError(f"config_from {recipe.config_from} does not fit the merged weights: "
                         f"{few_names(list(dict.fromkeys(differ)))} (its config against the first model's)")


def _write_side_files(recipe: Recipe, plan: Plan, dest: Path) -> tuple[list[str], dict[str, str]]:
    """Copy the side files into ``dest`` and adapt them: ``(files written, sha256 of each file copied)``."""
    source = side_file_source(recipe, plan)
    copied = sidefiles.copy_side_files(source, dest)
    hashes = sidefiles.copied_hashes(dest, copied)
    main_dir = dest / plan.checkpoints[0].components[TRANSFORMER].rel_dir
    floats = [t for t in plan.tensors if t.out_dtype.is_floating_point]
    if floats:
        by_size: dict[torch.dtype, int] = {}
        for t in floats:
            by_size[t.out_dtype] = by_size.get(t.out_dtype, 0) + t.nbytes
        sidefiles.set_config_dtype(main_dir / "config.json", max(by_size, key=by_size.get))
    if recipe.model_type == "encoder" and not sidefiles.has_sentence_transformers_files(dest):
        copied += sidefiles.write_bge_sentence_transformers_files(dest, plan.checkpoints[0].config)
    return copied, hashes


def _absolute(path: Optional[str]) -> Optional[str]:
    if path is None:
        return None
    local = Path(path).expanduser()
    return str(local.absolute()) if local.exists() else path


def resolved_recipe(recipe: Recipe, plan: Plan, weights: list[float], hashes: list[dict],
                    few_shot: Optional[dict] = None, side_files: Optional[dict] = None,
                    statistics: Optional[dict] = None) -> dict:
    """The recipe as run: absolute paths, the weights used, and what the inputs were.

    Weights computed from examples are written as fixed weights (``weights_from: null``), so the
    recipe reruns to the same model; how they were computed goes to ``provenance.weights_from``."""
    data = recipe.to_dict()
    for entry, weight, checkpoint in zip(data["models"], weights, plan.checkpoints):
        entry["path"] = _absolute(entry["path"])
        if isinstance(entry.get("examples"), str):
            entry["examples"] = _absolute(entry["examples"])
        if weight is not None:  # methods without weights have none
            entry["weight"] = weight
        if isinstance(checkpoint, AdapterCheckpoint):  # the base it was applied to, so a rerun uses the same
            entry["base"] = checkpoint.base_source
    data["base_model"] = _absolute(recipe.base_model)
    data["config_from"] = _absolute(recipe.config_from)
    data["output"] = str(Path(recipe.output).expanduser().absolute()) if recipe.output else None
    if not has_weight_schedules(weights):
        data["normalize"] = False  # the weights above are already the ones used (schedules normalise per tensor)
    every = plan.checkpoints + ([plan.base] if plan.base else [])
    data["provenance"] = {
        "cocktail_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "inputs": [{"path": _absolute(c.source), "sha256": h} for c, h in zip(every, hashes)],
    }
    if side_files is not None:  # config, tokenizer, sentence-transformers files: --verify checks them too
        data["provenance"]["side_files"] = side_files
    if few_shot is not None:
        # the weights found are fixed above; a data-aware merge keeps its examples (its statistics' source)
        data["weights_from"] = without_search(data["weights_from"]) if statistics is not None else None
        data["provenance"]["weights_from"] = few_shot
    if statistics is not None:  # the examples stay in weights_from: a rerun fits to them again (or the cache)
        data["provenance"]["statistics"] = statistics
        data["weights_from"] = {key: _absolute(value) if key in ("examples", "keep") and isinstance(value, str)
                                else value for key, value in (data["weights_from"] or {}).items()} or None
    return data


def without_search(weights_from: dict) -> dict:
    """A data-aware recipe's ``weights_from`` once its weights were searched: the examples that feed the
    statistics, without the options of the search (the weights found are written as fixed weights)."""
    searching = {"search", "search_budget", "holdout", "keep_tolerance", "keep_weight", "search_space",
                 "temperature"}
    return {key: value for key, value in weights_from.items() if key not in searching}


def _write_provenance(recipe: Recipe, plan: Plan, weights: list[float], hashes: list[dict], dest: Path,
                      few_shot: Optional[dict] = None, side_files: Optional[dict] = None,
                      statistics: Optional[dict] = None) -> list[str]:
    data = resolved_recipe(recipe, plan, weights, hashes, few_shot, side_files, statistics)
    (dest / provenance.RECIPE_FILE).write_text(provenance.dump_yaml(data))
    library = "sentence-transformers" if sidefiles.has_sentence_transformers_files(dest) else "transformers"
    every = plan.checkpoints + ([plan.base] if plan.base else [])
    card = provenance.model_card(data, weights, plan.summary(), library, __version__, provenance.card_inputs(every),
                                 seeded=get_method(recipe.merge_method).random)
    (dest / provenance.CARD_FILE).write_text(card)
    return [provenance.RECIPE_FILE, provenance.CARD_FILE]


__all__ = ["run", "check", "MergeResult", "iter_merged", "prepare"]
