"""Weights from a few examples: each model's loss on them, ``softmax(-loss / T)``, and weight search.

This is LM-Cocktail's ``compute_weights`` with its faults fixed: one model skeleton in memory (never
N models), examples tokenised once, per-batch padding, examples with few negatives allowed, seeded
and recorded negative sampling, rerankers supported; and ``search`` looks for the weights whose
*merged* model has the lowest loss, keeping a holdout part aside to show overfitting.

Entry points: :func:`few_shot_losses` (losses, weights and details), :func:`weights_from_examples`
(just the weights) and :func:`weights_for_plan` (what ``request.FewShotRequest`` calls for a
recipe's ``weights_from``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from cocktail.errors import InputError
from cocktail.fewshot import layer_groups
from cocktail.fewshot import losses as L
from cocktail.fewshot.examples import ExampleSet, ExampleSource, load_examples
from cocktail.fewshot.hints import loose_tolerance_note, near_uniform_note, small_holdout_note
from cocktail.fewshot.objective import Objective
from cocktail.fewshot.search import search_group_weights
from cocktail.io.adapters import bases_for, open_path
from cocktail.io.head_files import is_head_file
from cocktail.merging.methods import get_method
from cocktail.merging.plan import build_plan
from cocktail.merging.tensor_settings import TensorSettings, resolve_settings
from cocktail.modeling.loading import embedding_rows, load_tokenizer, resolve_device
from cocktail.modeling.placement import Placement, dtype_name
from cocktail.modeling.pooling import LAST_TOKEN, read_pooling
from cocktail.modeling.skeleton import Skeleton, model_folder
from cocktail.recipe.choices import MODEL_TYPES
from cocktail.recipe.model_type import settle as settle_model_type
from cocktail.recipe.weights_from import DEFAULT_SEARCH_BUDGET, FewShotOptions

DEFAULT_MAX_LENGTH = {"encoder": 512, "reranker": 512, "decoder": 2048, "llm-embedder": 512, "llm-reranker": 512}
assert tuple(DEFAULT_MAX_LENGTH) == MODEL_TYPES
MIN_FOR_DEFAULT_HOLDOUT = 10  # with fewer examples, --search keeps none aside unless asked
HOLDOUT_SEED_OFFSET = 1  # the holdout split uses random.Random(seed + 1), negatives random.Random(seed)
KEEP_SEED_OFFSET = 2  # the keep set's negatives: random.Random(seed + 2)


@dataclass
class SearchReport:
    """What ``--search`` found, with losses on the part it fitted and the part it kept aside.

    ``loss`` / ``keep_loss`` are the target and keep losses (on the searched part) of the answer, the
    ``start_*`` ones those of the softmax start; ``points`` holds every merge the search evaluated."""

    budget: int
    evaluations: int
    fit_examples: int
    holdout_examples: int
    start_weights: list[float]
    start_loss: float
    start_holdout_loss: Optional[float]
    weights: list  # per model: a number, or a per-tensor schedule (search_space layers:K)
    loss: float
    holdout_loss: Optional[float]
    search_space: str = "models"
    group_weights: Optional[list[list[float]]] = None  # [group][model], with layers:K
    layer_groups: Optional[list[dict]] = None
    keep_examples: int = 0
    keep_holdout_examples: int = 0
    start_keep_loss: Optional[float] = None
    start_keep_holdout_loss: Optional[float] = None
    keep_loss: Optional[float] = None
    keep_holdout_loss: Optional[float] = None
    objective: dict = field(default_factory=dict)
    points: list[dict] = field(default_factory=list)  # {"weights", "loss", "keep_loss", "allowed"} per merge

    @property
    def improvement(self) -> float:
        return self.start_loss - self.loss

    def to_dict(self) -> dict:
        data = asdict(self)
        data["improvement"] = self.improvement
        return data


@dataclass
class FewShotResult:
    """Each model's few-shot loss and the weights made of them (``weights`` is what a merge uses)."""

    models: list[str]
    losses: list[float]
    softmax_weights: list[float]
    weights: list  # per model: a number, or a per-tensor schedule (search_space layers:K)
    model_type: str
    temperature: float
    seed: int
    examples: int
    examples_source: str
    examples_sha256: str
    tasks: list[str]
    neg_number: int
    batch_size: int
    max_length: int
    query_instruction: Optional[str]
    pooling: Optional[str]
    device: str
    score_dtype: str = "float32"  # the dtype the models were run in (losses are float32 whatever it is)
    device_map: Optional[str] = None
    holdout_losses: Optional[list[float]] = None
    search: Optional[SearchReport] = None
    notes: list[str] = field(default_factory=list)
    keep_losses: Optional[list[float]] = None  # each model's loss on the keep set (its searched part)
    keep_holdout_losses: Optional[list[float]] = None
    keep_examples: int = 0
    keep_source: Optional[str] = None
    keep_sha256: Optional[str] = None
    keep_tolerance: Optional[float] = None
    keep_weight: Optional[float] = None

    def to_dict(self) -> dict:
        """Plain data, for ``--json`` and the provenance of a merged model."""
        data = asdict(self)
        data["search"] = self.search.to_dict() if self.search else None
        return data


# -- the work --------------------------------------------------------------------------------------


def softmax_weights(losses: Sequence[float], temperature: float = 5.0) -> list[float]:
    """LM-Cocktail's few-shot weights: ``softmax(-loss / temperature)``, one per model.

    Computed in float64 (LM-Cocktail uses float32; the two agree to about 1e-7), so the weights sum
    to 1 within rounding and a dumped recipe reruns with them as fixed weights.
    """
    if not losses:
        raise InputError("no losses to turn into weights")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise InputError(f"temperature must be a positive number, got {temperature!r}")
    values = [float(loss) for loss in losses]
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"losses must be finite numbers to become weights, got {values}")
    scaled = [-v / temperature for v in values]
    top = max(scaled)
    exps = [math.exp(s - top) for s in scaled]
    total = math.fsum(exps)
    return [e / total for e in exps]


def _sha256_of_examples(example_set: ExampleSet, source) -> str:
    if isinstance(source, (str, os.PathLike)) and Path(source).expanduser().is_file():
        return hashlib.sha256(Path(source).expanduser().read_bytes()).hexdigest()
    payload = json.dumps([e.to_dict() for e in example_set.examples], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _holdout_count(options: FewShotOptions, total: int) -> int:
    if options.holdout is None:
        return total // 5 if total >= MIN_FOR_DEFAULT_HOLDOUT else 0
    if options.holdout < 1:
        count = int(round(options.holdout * total))
    else:
        count = int(options.holdout)
    if count >= total:
        raise InputError(f"holdout of {count} examples leaves none to search on ({total} examples in all)")
    return count


def weights_for_plan(plan, model_type: str, options: FewShotOptions, *, method=None, parameters=None,
                     progress: bool = False, example_set: Optional[ExampleSet] = None,
                     keep_set: Optional[ExampleSet] = None, trust_remote_code: bool = False,
                     statistics=None, offload_beside: Optional[Path] = None) -> FewShotResult:
    """Few-shot losses and weights for the checkpoints of ``plan`` (the runner's entry point).

    Args:
        plan: a plan over the opened checkpoints (its compatibility checks have passed).
        model_type: ``encoder``, ``reranker`` or ``decoder``.
        options: the few-shot options.
        method: the merge method the search merges with (default: linear).
        parameters: that method's parameters.
        progress: print one line per model on stderr.
        example_set: the examples, if already loaded (else read from ``options.examples``).
        keep_set: the keep examples, if already loaded (else read from ``options.keep``, when given).
        trust_remote_code: let a model folder's own code (``auto_map``) run.
        statistics: the models' statistics, when the search merges with a data-aware ``method``.
        offload_beside: where the temporary offload folder goes when a device map puts weights on disk
            and ``options.offload_folder`` is not set (default: cocktail's cache folder).
    """
    options.check()
    seed = int(options.seed or 0)
    example_set = example_set or load_examples(options.examples, model_type, options.task)
    notes: list[str] = []
    say: Callable[[str], None] = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)

    # float32 plan: a merge with one-hot weights is then exactly that model, as loaded on its own
    fplan = build_plan(plan.checkpoints, plan.base, torch.float32)
    placement = Placement.make(options.scoring, options.device, fplan, beside=offload_beside)
    context = LossContext.of(fplan, model_type, options, trust_remote_code, device=placement.device)
    notes += context.notes
    max_length, pooling = context.max_length, context.pooling

    chosen = L.choose_negatives(example_set.examples, options.neg_number, seed)
    if keep_set is None and options.keep is not None:
        keep_set = load_examples(options.keep, model_type)
    kept = L.choose_negatives(keep_set.examples, options.neg_number, seed + KEEP_SEED_OFFSET) if keep_set else []
    held_count = keep_held_count = 0
    if options.search:
        held_count = _holdout_count(options, len(chosen))
        if held_count == 0:
            notes.append(f"no examples kept aside for the search ({len(chosen)} examples; "
                         f"the default holdout needs {MIN_FOR_DEFAULT_HOLDOUT}): watch for overfitting")
        notes += filter(None, [small_holdout_note(held_count)])
        if kept:  # the keep set is split in the same proportion
            keep_held_count = min(len(kept) - 1, int(round(len(kept) * held_count / len(chosen))))
    fit, held = _split(chosen, held_count, seed + HOLDOUT_SEED_OFFSET)
    keep_fit, keep_held = _split(kept, keep_held_count, seed + HOLDOUT_SEED_OFFSET)

    def prepared(examples):  # tokenised once, scored for every model and merge
        return context.prepare(examples) if examples else None

    data = _ExampleParts(prepared(fit), prepared(held), prepared(keep_fit), prepared(keep_held))

    say(f"scoring in {placement.describe()}")
    with closing(placement):  # removes the offload folder of a model spread to disk, also on an error
        skeleton = Skeleton(fplan, model_type, placement, trust_remote_code=trust_remote_code,
                            largest_batch=data.largest_batch())
        skeleton.statistics = statistics
        names = [c.source for c in fplan.checkpoints]
        per_model = []
        for i, name in enumerate(names):
            skeleton.fill_from_checkpoint(i)
            scores = data.losses(skeleton.model)
            if not math.isfinite(scores[0]):
                raise InputError(f"{name}: its loss on the examples is {scores[0]} (broken weights?)")
            if scores[2] is not None and not math.isfinite(scores[2]):
                raise InputError(f"{name}: its loss on the keep examples is {scores[2]} (broken weights?)")
            per_model.append(scores)
            say(f"loss {scores[0]:.6g}  " + (f"keep loss {scores[2]:.6g}  " if scores[2] is not None else "") + name)
        losses = [m[0] for m in per_model]
        keep_losses = [m[2] for m in per_model] if keep_fit else None
        start = softmax_weights(losses, options.temperature)
        if not options.search:
            notes += filter(None, [near_uniform_note(losses, start, options.temperature)])
        weights: list = start
        report = None
        if options.search:
            if keep_losses and options.tolerance is not None:  # tolerance mode, not a trade-off weight
                notes += filter(None, [loose_tolerance_note(keep_losses, options.tolerance)])
            report = _search(skeleton, data, options, method or get_method("linear"), dict(parameters or {}), start,
                             per_model, say)
            report.fit_examples, report.holdout_examples = len(fit), len(held)
            report.keep_examples, report.keep_holdout_examples = len(keep_fit), len(keep_held)
            weights = report.weights
        return FewShotResult(
            models=names, losses=losses, softmax_weights=start, weights=list(weights), model_type=model_type,
            temperature=float(options.temperature), seed=seed, examples=len(chosen),
            examples_source=example_set.source, examples_sha256=_sha256_of_examples(example_set, options.examples),
            tasks=example_set.tasks, neg_number=options.neg_number, batch_size=options.batch_size,
            max_length=max_length, query_instruction=options.query_instruction,
            pooling=pooling.source if pooling else None, device=str(placement.device),
            score_dtype=dtype_name(placement.dtype), device_map=placement.device_map,
            holdout_losses=[m[1] for m in per_model] if held else None, search=report, notes=notes,
            keep_losses=keep_losses, keep_holdout_losses=[m[3] for m in per_model] if keep_held else None,
            keep_examples=len(kept), keep_source=keep_set.source if keep_set else None,
            keep_sha256=_sha256_of_examples(keep_set, options.keep) if keep_set else None,
            keep_tolerance=options.tolerance, keep_weight=options.keep_weight,
        )


@dataclass
class LossContext:
    """What turns examples into a model's loss, settled once for a plan: the tokenizer, pooling, max
    length (capped at the model's positions) and device, and notes about what the loss leaves out."""

    model_type: str
    tokenizer: object
    pooling: Optional[object]
    max_length: int
    device: torch.device
    batch_size: int
    query_instruction: Optional[str]
    notes: list[str]

    @classmethod
    def of(cls, fplan, model_type: str, options: FewShotOptions, trust_remote_code: bool = False,
           device: Optional[torch.device] = None) -> "LossContext":
        notes: list[str] = []
        first = fplan.checkpoints[0]
        max_length = options.max_length or DEFAULT_MAX_LENGTH[model_type]
        limit = L.position_limit(first.config)
        if limit is not None and max_length > limit:
            if options.max_length is not None:  # asked for explicitly: say why it is not used
                notes.append(f"max length {max_length} is more than the model's {limit} positions; using {limit}")
            max_length = limit
        heads = [c for c in fplan.components if is_head_file(first.components[c])]
        extra_modules = [c for c in fplan.components if c != "transformer" and c not in heads]
        if model_type in ("encoder", "llm-embedder") and extra_modules:
            notes.append(f"sentence-transformers module(s) {', '.join(extra_modules)} are not applied in the loss "
                         "(the embedding is the pooled transformer output, as in LM-Cocktail)")
        if heads:
            notes.append(f"the weights come from the dense loss: head file(s) {', '.join(heads)} (bge-m3's sparse "
                         "and ColBERT heads) are merged with them but not used in the loss, as in LM-Cocktail")
        tokenizer = load_tokenizer(model_folder(fplan), trust_remote_code=trust_remote_code,
                                   rows=embedding_rows(fplan))
        pooling = {"encoder": lambda: read_pooling(first.root),
                   "llm-embedder": lambda: read_pooling(first.root, LAST_TOKEN)}.get(model_type, lambda: None)()
        device = device if device is not None else resolve_device(options.device)
        return cls(model_type, tokenizer, pooling, max_length, device, options.batch_size,
                   options.query_instruction, notes)

    def prepare(self, examples) -> L.Prepared:
        """``examples`` tokenised once, to be scored by any model of the plan."""
        return L.prepare(examples, self.model_type, self.tokenizer, batch_size=self.batch_size,
                         max_length=self.max_length, query_instruction=self.query_instruction,
                         pooling=self.pooling, device=self.device)


def _split(examples: list, count: int, seed: int) -> tuple[list, list]:
    """``(kept for the search, held out)``: ``count`` examples drawn with ``random.Random(seed)``."""
    held = set(random.Random(seed).sample(range(len(examples)), count)) if count else set()
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])


@dataclass
class _ExampleParts:
    """The tokenised parts a model is scored on: target (searched, held out) and keep (searched, held out)."""

    fit: L.Prepared
    held: Optional[L.Prepared]
    keep: Optional[L.Prepared]
    keep_held: Optional[L.Prepared]

    def largest_batch(self) -> tuple[int, int]:
        """``(rows, tokens)`` of the largest forward pass any part makes."""
        return max((part.largest_batch() for part in (self.fit, self.held, self.keep, self.keep_held)
                    if part is not None), key=lambda shape: shape[0] * shape[1])

    def losses(self, model, held: bool = True) -> tuple:
        """``(loss, holdout loss, keep loss, keep holdout loss)`` of ``model`` (``None`` where no examples)."""
        def score(part):
            return part.loss(model) if part is not None else None

        return (score(self.fit), score(self.held) if held else None, score(self.keep),
                score(self.keep_held) if held else None)


def _search(skeleton: Skeleton, data: _ExampleParts, options: FewShotOptions, method, parameters: dict,
            start: list[float], per_model: list[tuple], say: Callable[[str], None]) -> SearchReport:
    """Search the weights (one group, or K layer groups) for the lowest objective; report every point."""
    plan = skeleton.merge_plan
    count = len(plan.checkpoints)
    groups = options.layer_groups() or 1
    layers = layer_groups.plan_layers(plan)
    if options.layer_groups() is not None:
        layer_groups.group_layers(layers, groups)  # refuses too many groups before any merge
    objective = Objective.make([m[2] for m in per_model] if data.keep is not None else None, options.tolerance,
                               options.keep_weight)
    skeleton.keep_inputs()  # every candidate re-merges the same input tensors
    base_settings, _ = resolve_settings(plan, method, [1.0 / count] * count, parameters)
    tensor_group = layer_groups.tensor_groups(plan, groups, layers)

    def fill(candidate: list[list[float]]) -> None:
        settings = [None if s is None else TensorSettings(tuple(candidate[g]), s.parameters)
                    for s, g in zip(base_settings, tensor_group)]
        skeleton.fill_from_merge(method, [], parameters, settings=settings)

    points: list[dict] = []

    def evaluate(candidate: list[list[float]]) -> float:
        fill(candidate)
        loss, _, keep, _ = data.losses(skeleton.model, held=False)
        value = objective.value(loss, keep)
        points.append({"weights": candidate if groups > 1 else candidate[0], "loss": loss, "keep_loss": keep,
                       "allowed": objective.allowed(keep) if keep is not None else True})
        say(f"search: loss {loss:.6g}" + (f", keep loss {keep:.6g}" if keep is not None else "")
            + f" at {_show(candidate)}")
        return value if math.isfinite(value) else math.inf

    known = {}
    if method.name == "linear" and plan.base is None:  # a one-hot linear merge is that model
        for i, scores in enumerate(per_model):
            one_hot = tuple(1.0 if j == i else 0.0 for j in range(count))
            known[(one_hot,) * groups] = objective.value(scores[0], scores[2])
    outcome = search_group_weights(evaluate, [start] * groups, options.search_budget, known)
    answer = outcome.weights
    fill([start] * groups)
    start_scores = data.losses(skeleton.model)
    fill(answer)
    answer_scores = data.losses(skeleton.model)
    return SearchReport(
        options.search_budget, outcome.evaluations, 0, 0, list(start), start_scores[0], start_scores[1],
        layer_groups.schedules(answer, layers), answer_scores[0], answer_scores[1],
        search_space=options.search_space, group_weights=answer if groups > 1 else None,
        layer_groups=layer_groups.describe(plan, groups) if groups > 1 else None,
        start_keep_loss=start_scores[2], start_keep_holdout_loss=start_scores[3], keep_loss=answer_scores[2],
        keep_holdout_loss=answer_scores[3], objective=objective.to_dict(), points=points)


def _show(candidate: list[list[float]]) -> str:
    return " | ".join(f"[{', '.join(f'{w:.4f}' for w in group)}]" for group in candidate)


def few_shot_losses(models: Sequence[Union[str, os.PathLike]], examples: ExampleSource,
                    model_type: Optional[str] = None,
                    temperature: float = 5.0, query_instruction: Optional[str] = None, neg_number: int = 7,
                    batch_size: int = 2, max_length: Optional[int] = None, seed: int = 0,
                    device: Optional[str] = None, task: Union[str, Sequence[str], None] = None,
                    search: bool = False, search_budget: int = DEFAULT_SEARCH_BUDGET,
                    holdout: Optional[float] = None, progress: bool = False,
                    trust_remote_code: bool = False, adapter_base: Optional[str] = None,
                    keep: Optional[ExampleSource] = None, keep_tolerance: Optional[float] = None,
                    keep_weight: Optional[float] = None, search_space: str = "models",
                    score_dtype: Optional[str] = None, device_map: Optional[str] = None,
                    max_memory: Union[str, dict, None] = None,
                    offload_folder: Union[str, os.PathLike, None] = None) -> FewShotResult:
    """Each model's loss on ``examples`` and the weights ``softmax(-loss / temperature)``.

    Args:
        models: model folders, ``.safetensors`` files or cached hub ids (one architecture).
        examples: a path to a JSONL / JSON list / task-keyed JSON file, or a list of example dicts.
        model_type: ``encoder`` (embedder), ``reranker`` (one-logit cross-encoder), ``decoder``,
            ``llm-embedder`` or ``llm-reranker`` (default: what the models' config.json says).
        temperature: the softmax temperature (LM-Cocktail's default 5.0).
        query_instruction: prepended to every query (unless the example has its own ``prompt``).
        neg_number: the most negatives used per query (fewer are fine).
        batch_size: how many queries share in-batch negatives (part of the loss definition).
        max_length: tokens per text (default 512; 2048 for decoders; capped at the model's positions).
        seed: seeds the choice of negatives (and the holdout split).
        device: ``cpu``, ``cuda``, ... (default: cuda when present).
        task: for task-keyed files, the task(s) to use (default: all).
        search: also search for the weights whose merged model has the lowest loss.
        search_budget: the most merged models the search evaluates.
        holdout: examples kept aside by the search: a fraction below 1 or a count (default: a fifth
            when there are at least 10 examples).
        progress: print progress lines on stderr.
        trust_remote_code: let a model folder's own code (``auto_map``) run; refused otherwise.
        adapter_base: the base of the LoRA adapter folders among ``models`` (default: each one's config's).
        keep: examples of what the merge must keep (same formats as ``examples``): each model's loss on
            them is reported, and the search keeps the merge's keep loss within ``keep_tolerance``.
        keep_tolerance: how far the search's keep loss may rise above the best model's (default 0.05).
        keep_weight: instead of a tolerance, the search minimises ``loss + keep_weight * keep loss``.
        search_space: ``"models"`` (one weight per model) or ``"layers:K"`` (K contiguous layer groups,
            each with its own weights; the weights are then per-tensor schedules).
        score_dtype: the dtype the models run in: ``auto`` (default: the checkpoint's dtype on a GPU,
            float32 on CPU), ``float32``, ``bfloat16`` or ``float16``; losses are float32 whatever it is.
        device_map: ``auto``, ``balanced`` or ``sequential``: spread each model over the GPUs, the CPU
            and disk with accelerate (default: the whole model on ``device``).
        max_memory: the most memory per device, ``"0=20GiB,cpu=30GiB"`` or ``{0: "20GiB", "cpu": "30GiB"}``:
            with ``device_map`` what does not fit goes to disk; without it, a run that would not fit is refused.
        offload_folder: where the temporary folder of disk-offloaded weights is made (default:
            cocktail's cache folder); it is removed afterwards.

    Returns:
        A :class:`FewShotResult`; ``.weights`` are the searched weights with ``search``, else the softmax ones.
    """
    options = FewShotOptions(examples=examples, temperature=temperature, query_instruction=query_instruction,
                             neg_number=neg_number, batch_size=batch_size, max_length=max_length,
                             task=list(task) if isinstance(task, (list, tuple)) else task, seed=seed,
                             device=device, search=search, search_budget=search_budget, holdout=holdout,
                             keep=keep, keep_tolerance=keep_tolerance, keep_weight=keep_weight,
                             search_space=search_space, score_dtype=score_dtype, device_map=device_map,
                             max_memory=max_memory,
                             offload_folder=os.fspath(offload_folder) if offload_folder is not None else None)
    options.check()
    if model_type is not None and model_type not in MODEL_TYPES:
        raise InputError(f"unknown model type {model_type!r} (choose from {', '.join(MODEL_TYPES)})")
    if not models:
        raise InputError("no models given")
    opened = []
    try:
        for model, base in zip(models, bases_for(models, adapter_base)):
            opened.append(open_path(model, base))  # configs and tensor headers only
        model_type = settle_model_type(model_type, opened[0])
        example_set = load_examples(options.examples, model_type, options.task)  # before any weight is read
        keep_set = load_examples(options.keep, model_type) if options.keep is not None else None
        plan = build_plan(opened)
        return weights_for_plan(plan, model_type, options, progress=progress, example_set=example_set,
                                keep_set=keep_set, trust_remote_code=trust_remote_code)
    finally:
        for ckpt in opened:
            ckpt.close()


def weights_from_examples(models: Sequence[Union[str, os.PathLike]], examples: ExampleSource,
                          model_type: Optional[str] = None, temperature: float = 5.0,
                          query_instruction: Optional[str] = None, neg_number: int = 7, batch_size: int = 2,
                          max_length: Optional[int] = None, seed: int = 0, device: Optional[str] = None,
                          **options) -> list[float]:
    """LM-Cocktail's few-shot weights, one per model: ``softmax(-loss / temperature)``.

    Takes the arguments of :func:`few_shot_losses` (``task``, ``search``, ``keep``, ``search_space``,
    ``trust_remote_code``, ... as keywords). With ``search_space="layers:K"`` each weight is a
    per-tensor schedule (a list of ``{filter, value}`` entries), as ``cocktail.merge`` takes it.
    """
    return few_shot_losses(models, examples, model_type=model_type, temperature=temperature,
                           query_instruction=query_instruction, neg_number=neg_number, batch_size=batch_size,
                           max_length=max_length, seed=seed, device=device, **options).weights
