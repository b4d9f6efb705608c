"""``cocktail sweep``: the trade-off curve between two models.

The two models are merged in memory (``w * A + (1 - w) * B`` with the ``linear`` method of the merge
core, nothing written to disk) at evenly spaced weights ``w`` from 0 to 1, and every merge is scored
on every data set. With a data-aware method (``regmean``, ``fisher``) each point is that merge with
weights ``[w, 1 - w]`` scaling the models' statistics: its own frontier. With few-shot examples, the weight LM-Cocktail's few-shot weighting would pick is
scored too and marked on the plot. The merged model takes the first model's config, tokenizer and
pooling, as ``cocktail merge`` does.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from cocktail.errors import InputError, option
from cocktail.evaluation.evaluate import (
    SCORERS,
    Task,
    eval_model_type,
    make_tasks,
    modes_of,
    score_encoder,
    scorer_class,
    use_hybrid_weights,
)
from cocktail.fewshot.examples import load_examples
from cocktail.fewshot.request import same_model
from cocktail.fewshot.statistics import statistics_for_plan
from cocktail.fewshot.weighting import weights_from_examples
from cocktail.io.adapters import bases_for, open_path
from cocktail.io.figure import check_target, pareto_front, pyplot, save_png
from cocktail.merging.methods import get_method
from cocktail.merging.plan import build_plan
from cocktail.merging.tensor_settings import parameter_schedules
from cocktail.modeling.m3 import hybrid_weights as m3_hybrid_weights
from cocktail.modeling.progress import progress_bar
from cocktail.recipe.choices import DATA_AWARE_METHODS
from cocktail.recipe.scoring import ScoringOptions
from cocktail.recipe.weights_from import FewShotOptions


@dataclass
class SweepResult:
    """Scores along the sweep: ``rows`` are ``{"weight", "data", "metric", "value"}``, ``weight``
    being the weight of ``models[0]`` (``models[1]`` gets ``1 - weight``)."""

    models: list[str]
    weights: list[float]
    rows: list[dict]
    tasks: list[Task]
    few_shot_weights: Optional[list[float]] = None
    method: str = "linear"  # or a data-aware method: each point its merge at [w, 1 - w]
    parameters: dict = field(default_factory=dict)

    @property
    def few_shot_weight(self) -> Optional[float]:
        return self.few_shot_weights[0] if self.few_shot_weights else None

    def to_dict(self) -> dict:
        data = {"models": self.models, "weights": self.weights, "few_shot_weights": self.few_shot_weights,
                "method": self.method, "parameters": self.parameters, "rows": self.rows}
        if len(self.tasks) >= 2:
            data["frontier"] = frontier_curves(self)
        return data


def sweep_points(steps: int) -> list[float]:
    """``steps`` evenly spaced weights from 0 to 1, both ends included."""
    if steps < 2:
        raise InputError(f"a sweep needs at least 2 steps, got {steps}")
    return [round(i / (steps - 1), 12) for i in range(steps)]


def few_shot_weights(models: Sequence[str], examples, query_instruction: Optional[str],
                     device: Optional[str], max_length: int = 512, trust_remote_code: bool = False,
                     adapter_base: Optional[str] = None, model_type: str = "encoder",
                     temperature: float = 5.0, scoring: Optional[ScoringOptions] = None) -> list[float]:
    """The weights LM-Cocktail's few-shot weighting gives ``models`` (``cocktail.weights_from_examples``;
    for bge-m3, from the dense loss)."""
    return [float(w) for w in weights_from_examples(list(models), examples, model_type=model_type,
                                                    temperature=temperature, query_instruction=query_instruction,
                                                    max_length=max_length,
                                                    device=device, trust_remote_code=trust_remote_code,
                                                    adapter_base=adapter_base,
                                                    **asdict(scoring or ScoringOptions()))]


def sweep_weights(models: Sequence[str], data: Sequence[Union[str, Task]], steps: int = 11,
                  query_instruction: Optional[str] = None, examples=None, *, split: str = "test",
                  batch_size: int = 32, max_length: int = 512, device: Optional[str] = None,
                  progress: bool = False, trust_remote_code: bool = False,
                  adapter_base: Optional[str] = None, model_type: Optional[str] = None,
                  temperature: float = 5.0, mode: Optional[str] = None,
                  hybrid_weights: Optional[Sequence[float]] = None, method: str = "linear",
                  parameters: Optional[dict] = None, keep=None, base: Optional[str] = None,
                  score_dtype: Optional[str] = None, device_map: Optional[str] = None,
                  max_memory: Union[str, dict, None] = None, offload_folder: Optional[str] = None
                  ) -> SweepResult:
    """Merge two models in memory at weights 0, 1/(steps-1), ..., 1 and score each merge on ``data``.

    Args:
        models: the two models ``A`` and ``B``; the merge at weight ``w`` is ``w * A + (1 - w) * B``.
        data: data set paths (see :func:`cocktail.evaluate.evaluate_models`) or :class:`Task` objects.
        steps: how many weights, evenly spaced, both ends included.
        query_instruction: put before the queries of the data given as paths.
        examples: few-shot examples (a file or a list of ``{query, pos, neg}``); the weight they give
            is scored too and reported as ``few_shot_weights``.
        temperature: the few-shot softmax temperature (LM-Cocktail's default 5.0).
        mode: the retrieval mode a plot of the result will draw; checked against the models (sparse,
            colbert and hybrid need a bge-m3 pair) before anything is scored.
        method: ``linear`` (default), or a data-aware method (``regmean``, ``fisher``, with its
            ``parameters``): each point is then that merge with weights ``[w, 1 - w]`` scaling each model's
            statistics, computed once (and cached) from ``examples``, and from ``keep`` for the model
            that is ``base``: a frontier of the data-aware merge.
        split, batch_size, max_length, device, progress, trust_remote_code, adapter_base, model_type,
            hybrid_weights: as
            for ``evaluate_models`` (a bge-m3 pair is scored in each mode; a reranker ranks each query's own
            passages of query/pos/neg data).
        score_dtype, device_map, max_memory, offload_folder: how the merged model is run (its dtype, spread
            over devices and disk; the merges fill the same map): see :func:`cocktail.few_shot_losses`.
    """
    scoring = ScoringOptions(score_dtype, device_map, max_memory, offload_folder)
    scoring.check()
    models = [str(m) for m in models]
    if len(models) != 2:
        raise InputError(f"a sweep needs exactly 2 models, got {len(models)}")
    if model_type is not None and model_type not in SCORERS:
        raise InputError(f"cocktail sweep scores {', '.join(SCORERS)} models, not {model_type!r}")
    model_type = eval_model_type(model_type, models[0], bases_for(models, adapter_base)[0])
    points = sweep_points(steps)
    hybrid = None if hybrid_weights is None else m3_hybrid_weights(hybrid_weights)
    tasks = make_tasks(data, query_instruction, split)
    bases = bases_for(models, adapter_base)
    merge_method = get_method(method)
    if merge_method.name not in ("linear", *DATA_AWARE_METHODS):
        raise InputError(f"cocktail sweep merges with linear or a data-aware method ({', '.join(DATA_AWARE_METHODS)}), "
                         f"not {method}")
    parameters = dict(parameters or {})
    parameter_schedules(merge_method, parameters)
    if merge_method.statistics is not None and examples is None:
        raise InputError(f"a {method} sweep needs {option('examples')}: its statistics come from them")
    if keep is not None and merge_method.statistics is None:
        raise InputError(f"{option('keep')} feeds a data-aware method's statistics: give --method regmean or fisher")
    checkpoints = [open_path(m, adapter) for m, adapter in zip(models, bases)]
    statistics = None
    try:
        plan = build_plan(checkpoints, dtype=torch.float32)
        scorer = scorer_class(model_type, plan)
        check_mode(mode, modes_of(scorer))
        if merge_method.statistics is not None:
            statistics = sweep_statistics(plan, models, model_type, merge_method.statistics, examples, keep, base,
                                          query_instruction, device, progress, trust_remote_code)
        shots = (few_shot_weights(models, examples, query_instruction, device, max_length, trust_remote_code,
                                  adapter_base, model_type, temperature, scoring) if examples is not None else None)
        if shots is not None and all(abs(shots[0] - p) > 1e-9 for p in points):
            points = sorted(points + [shots[0]])
        encoder = use_hybrid_weights(scorer(plan, device=device, batch_size=batch_size, max_length=max_length,
                                            progress=progress, label="merge", trust_remote_code=trust_remote_code,
                                            scoring=scoring), hybrid)
        rows: list[dict] = []
        encoder.skeleton.statistics = statistics
        with encoder:  # removes the offload folder of a model spread to disk
            for weight in _progress(points, progress):
                encoder.fill_from_merge(merge_method, [weight, 1.0 - weight], parameters)
                for row in score_encoder(encoder, tasks, f"{weight:g}"):
                    rows.append({"weight": weight, **{k: v for k, v in row.items() if k != "model"}})
    finally:
        if statistics is not None:
            statistics.close()
        for ckpt in checkpoints:
            ckpt.close()
    return SweepResult(models, points, rows, tasks, shots, method=merge_method.name, parameters=parameters)


def sweep_statistics(plan, models: list[str], model_type: str, kind: str, examples, keep, base: Optional[str],
                     query_instruction: Optional[str], device: Optional[str], progress: bool,
                     trust_remote_code: bool):
    """The two models' statistics for a data-aware sweep: from ``examples``, and from ``keep`` for the
    model that is ``base`` (as ``cocktail merge --base B --keep K`` assigns them)."""
    options = FewShotOptions(examples=examples, keep=keep, query_instruction=query_instruction, device=device)
    options.check()
    sets = {"target": load_examples(examples, model_type)}
    sources = ["target", "target"]
    if keep is not None:
        at = [i for i, m in enumerate(models) if same_model(m, base)]
        if not at:
            raise InputError(f"{option('keep')} feeds the base model's statistics, but "
                             + (f"the base {base} is not one of the two models" if base else f"no {option('base')} is given"))
        sets["keep"] = load_examples(keep, model_type)
        for i in at:
            sources[i] = "keep"
    return statistics_for_plan(plan, model_type, kind, options, sources, sets, progress=progress,
                               trust_remote_code=trust_remote_code)


def _progress(points: list[float], enabled: bool):
    return progress_bar(len(points), "sweep", enabled, unit="weight", iterable=points)


def table_rows(result: SweepResult) -> list[dict]:
    """Rows for :func:`cocktail.evaluate.format_table`, the few-shot weight marked."""
    marked = result.few_shot_weight

    def label(weight: float) -> str:
        text = f"{weight:.4g}"
        return f"{text} (few-shot)" if marked is not None and abs(weight - marked) < 1e-9 else text

    return [{**row, "weight": label(row["weight"])} for row in result.rows]


def plot_sweep(result: SweepResult, path: Union[str, os.PathLike], labels: Optional[Sequence[str]] = None,
               title: Optional[str] = None, mode: Optional[str] = None) -> Path:
    """Draw one line per data set (its first metric) against the weight of the first model; PNG. For a
    bge-m3 pair, ``mode`` picks the retrieval mode drawn (default ``dense``)."""
    drawn = drawn_mode(result, mode)
    plt = pyplot()
    check_target(path)
    names = _names(result, labels)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for task in result.tasks:
        points = _curve(result, task, drawn)
        shown = f"{task.metrics[0]}[{drawn}]" if drawn else task.metrics[0]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{task.name} ({shown})")
    if result.few_shot_weight is not None:
        ax.axvline(result.few_shot_weight, color="grey", linestyle="--",
                   label=f"few-shot weights ({result.few_shot_weight:.2f})")
    ax.set_xlabel(f"weight of {names[0]}  (1 - weight on {names[1]})")
    ax.set_ylabel("score")
    ax.set_xlim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"cocktail sweep: {names[0]} + {names[1]}")
    fig.tight_layout()
    return save_png(fig, path)


def frontier_curves(result: SweepResult, mode: Optional[str] = None) -> list[dict]:
    """The measured frontier: for each data set after the first (a general skill), the points
    ``{"weight", "x", "y"}`` with x its first metric and y the first data set's (the target's) first metric
    (for a bge-m3 pair, in retrieval ``mode``, default dense)."""
    drawn = drawn_mode(result, mode)
    if len(result.tasks) < 2:
        raise InputError(f"the frontier plot needs at least 2 data sets (the target first, then the general "
                         f"ones), got {len(result.tasks)}")
    target = result.tasks[0]
    ys = dict(_curve(result, target, drawn))
    curves = []
    for task in result.tasks[1:]:
        points = [{"weight": w, "x": x, "y": ys[w]} for w, x in _curve(result, task, drawn) if w in ys]
        curves.append({"target": target.name, "target_metric": target.metrics[0], "general": task.name,
                       "general_metric": task.metrics[0], "points": points})
    return curves


def plot_frontier(result: SweepResult, path: Union[str, os.PathLike], labels: Optional[Sequence[str]] = None,
                  mode: Optional[str] = None) -> Path:
    """Draw the measured frontier (:func:`frontier_figure`) into the PNG file ``path``."""
    check_target(path)
    return save_png(frontier_figure(result, labels, mode), path)


def frontier_figure(result: SweepResult, labels: Optional[Sequence[str]] = None, mode: Optional[str] = None):
    """The measured frontier (:func:`frontier_curves`) as a matplotlib figure: one panel per general data
    set, x its metric, y the target's, each merge labelled with its weight; the few-shot weight marked.
    Long names are shortened (a path to its last part) and wrapped, so nothing is cut off."""
    plt = pyplot()
    curves = frontier_curves(result, mode)
    names = _names(result, labels)
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 5.2), dpi=120, squeeze=False,
                             layout="constrained")
    target = _short(curves[0]["target"])
    fig.suptitle(_wrapped(f"measured frontier of w * {names[0]} + (1 - w) * {names[1]}: {target} (the target) "
                          "against each general data set", 55 * len(curves)), fontsize=11)
    marked = result.few_shot_weight
    for ax, curve in zip(axes[0], curves):
        points = curve["points"]
        ax.plot([p["x"] for p in points], [p["y"] for p in points], marker="o", color="tab:blue",
                label=f"w * {names[0]} + (1 - w) * {names[1]}")
        for p in points:
            ax.annotate(f"{p['weight']:.2g}", (p["x"], p["y"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        front = pareto_front([(p["x"], p["y"]) for p in points], x_lower=False, y_lower=False)
        if len(front) > 1:
            ax.plot([p[0] for p in front], [p[1] for p in front], color="tab:green", alpha=0.4, linewidth=4,
                    label="Pareto front")
        if marked is not None:
            hit = [p for p in points if abs(p["weight"] - marked) < 1e-9]
            if hit:
                ax.scatter([hit[0]["x"]], [hit[0]["y"]], marker="*", s=180, color="tab:red", zorder=5,
                           label=f"few-shot weights ({marked:.2f})")
        ax.set_xlabel(_wrapped(f"{_short(curve['general'])} ({curve['general_metric']}): general skill", 50))
        ax.set_ylabel(_wrapped(f"{target} ({curve['target_metric']}): target", 40))
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # long tick labels side by side: few of them
        ax.ticklabel_format(axis="both", useOffset=False, style="plain")  # no "1e-5+8.3e-1" over the label
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(_wrapped(f"{target} against {_short(curve['general'])}", 50), fontsize=10)
    return fig


def _short(name: str) -> str:
    """A data set's name as a plot shows it: a path by its last part (``scifact``, ``sts-test.csv``)."""
    return Path(name).name or name if ("/" in name or os.sep in name) else name


def _wrapped(text: str, width: int) -> str:
    """``text`` on lines of at most ``width`` characters (a long title or label is not cut off)."""
    return textwrap.fill(text, width, break_long_words=True, break_on_hyphens=False)


def _names(result: SweepResult, labels: Optional[Sequence[str]]) -> list[str]:
    return list(labels) if labels else [Path(m).name or m for m in result.models]


def drawn_mode(result: SweepResult, mode: Optional[str]) -> Optional[str]:
    """The retrieval mode a plot draws: ``None`` for models scored one way, else ``mode`` (default dense)."""
    modes = list(dict.fromkeys(r["mode"] for r in result.rows if r.get("mode")))
    check_mode(mode, modes or ["dense"])
    return (mode or "dense") if modes else None


def check_mode(mode: Optional[str], modes: Sequence[str]) -> None:
    """Refuse a retrieval ``mode`` the models are not scored in (``modes``)."""
    if mode is not None and mode not in modes:
        raise InputError(f"{option('mode')} {mode}: these models are scored in {', '.join(modes)} only "
                         "(sparse, colbert and hybrid are bge-m3's, with its colbert_linear.pt and sparse_linear.pt)")


def _curve(result: SweepResult, task: Task, mode: Optional[str] = None) -> list[tuple[float, float]]:
    """``[(weight, value)]`` of ``task``'s first metric (in retrieval ``mode``), by weight."""
    metric = task.metrics[0]
    return sorted((r["weight"], r["value"]) for r in result.rows
                  if r["data"] == task.name and r["metric"] == metric and r.get("mode") == mode)
