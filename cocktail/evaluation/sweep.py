"""``cocktail sweep``: the trade-off curve between two models.

The two models are merged in memory (``w * A + (1 - w) * B`` with the ``linear`` method of the merge
core, nothing written to disk) at evenly spaced weights ``w`` from 0 to 1, and every merge is scored
on every data set. With few-shot examples, the weight LM-Cocktail's few-shot weighting would pick is
scored too and marked on the plot. The merged model takes the first model's config, tokenizer and
pooling, as ``cocktail merge`` does.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from tqdm import tqdm

from cocktail.errors import InputError, option
from cocktail.evaluation.evaluate import Task, make_tasks, score_encoder
from cocktail.fewshot.weighting import weights_from_examples
from cocktail.io.adapters import bases_for, open_path
from cocktail.merging.methods import get_method
from cocktail.merging.plan import build_plan
from cocktail.modeling.encoder import Encoder


@dataclass
class SweepResult:
    """Scores along the sweep: ``rows`` are ``{"weight", "data", "metric", "value"}``, ``weight``
    being the weight of ``models[0]`` (``models[1]`` gets ``1 - weight``)."""

    models: list[str]
    weights: list[float]
    rows: list[dict]
    tasks: list[Task]
    few_shot_weights: Optional[list[float]] = None

    @property
    def few_shot_weight(self) -> Optional[float]:
        return self.few_shot_weights[0] if self.few_shot_weights else None

    def to_dict(self) -> dict:
        return {"models": self.models, "weights": self.weights, "few_shot_weights": self.few_shot_weights,
                "rows": self.rows}


def sweep_points(steps: int) -> list[float]:
    """``steps`` evenly spaced weights from 0 to 1, both ends included."""
    if steps < 2:
        raise InputError(f"a sweep needs at least 2 steps, got {steps}")
    return [round(i / (steps - 1), 12) for i in range(steps)]


def few_shot_weights(models: Sequence[str], examples, query_instruction: Optional[str],
                     device: Optional[str], max_length: int = 512, trust_remote_code: bool = False,
                     adapter_base: Optional[str] = None, temperature: float = 5.0) -> list[float]:
    """The weights LM-Cocktail's few-shot weighting gives ``models`` (``cocktail.weights_from_examples``)."""
    return [float(w) for w in weights_from_examples(list(models), examples, model_type="encoder",
                                                    temperature=temperature, query_instruction=query_instruction, max_length=max_length,
                                                    device=device, trust_remote_code=trust_remote_code,
                                                    adapter_base=adapter_base)]


def sweep_weights(models: Sequence[str], data: Sequence[Union[str, Task]], steps: int = 11,
                  query_instruction: Optional[str] = None, examples=None, *, split: str = "test",
                  batch_size: int = 32, max_length: int = 512, device: Optional[str] = None,
                  progress: bool = False, trust_remote_code: bool = False,
                  adapter_base: Optional[str] = None, temperature: float = 5.0) -> SweepResult:
    """Merge two models in memory at weights 0, 1/(steps-1), ..., 1 and score each merge on ``data``.

    Args:
        models: the two models ``A`` and ``B``; the merge at weight ``w`` is ``w * A + (1 - w) * B``.
        data: data set paths (see :func:`cocktail.evaluate.evaluate_models`) or :class:`Task` objects.
        steps: how many weights, evenly spaced, both ends included.
        query_instruction: put before the queries of the data given as paths.
        examples: few-shot examples (a file or a list of ``{query, pos, neg}``); the weight they give
            is scored too and reported as ``few_shot_weights``.
        temperature: the few-shot softmax temperature (LM-Cocktail's default 5.0).
        split, batch_size, max_length, device, progress, trust_remote_code, adapter_base: as for
            ``evaluate_models``.
    """
    models = [str(m) for m in models]
    if len(models) != 2:
        raise InputError(f"a sweep needs exactly 2 models, got {len(models)}")
    points = sweep_points(steps)
    tasks = make_tasks(data, query_instruction, split)
    bases = bases_for(models, adapter_base)
    shots = (few_shot_weights(models, examples, query_instruction, device, max_length, trust_remote_code,
                              adapter_base, temperature) if examples is not None else None)
    if shots is not None and all(abs(shots[0] - p) > 1e-9 for p in points):
        points = sorted(points + [shots[0]])
    linear = get_method("linear")
    checkpoints = [open_path(m, base) for m, base in zip(models, bases)]
    try:
        plan = build_plan(checkpoints, dtype=torch.float32)
        encoder = Encoder(plan, device=device, batch_size=batch_size, max_length=max_length, progress=progress,
                          label="merge", trust_remote_code=trust_remote_code)
        rows: list[dict] = []
        for weight in _progress(points, progress):
            encoder.fill_from_merge(linear, [weight, 1.0 - weight])
            for row in score_encoder(encoder, tasks, f"{weight:g}"):
                rows.append({"weight": weight, "data": row["data"], "metric": row["metric"], "value": row["value"]})
    finally:
        for ckpt in checkpoints:
            ckpt.close()
    return SweepResult(models, points, rows, tasks, shots)


def _progress(points: list[float], enabled: bool):
    return tqdm(points, desc="sweep", unit="weight", file=sys.stderr, leave=False, disable=not enabled)


def table_rows(result: SweepResult) -> list[dict]:
    """Rows for :func:`cocktail.evaluate.format_table`, the few-shot weight marked."""
    marked = result.few_shot_weight

    def label(weight: float) -> str:
        text = f"{weight:.4g}"
        return f"{text} (few-shot)" if marked is not None and abs(weight - marked) < 1e-9 else text

    return [{**row, "weight": label(row["weight"])} for row in result.rows]


def plot_sweep(result: SweepResult, path: Union[str, os.PathLike], labels: Optional[Sequence[str]] = None,
               title: Optional[str] = None) -> Path:
    """Draw one line per data set (its first metric) against the weight of the first model; PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError(f"{option('plot')} needs matplotlib: pip install 'cocktail[plot]'") from None
    target = Path(path).expanduser()
    if not target.parent.is_dir():
        raise InputError(f"cannot write the plot: folder {target.parent} does not exist")
    names = list(labels) if labels else [Path(m).name or m for m in result.models]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for task in result.tasks:
        metric = task.metrics[0]
        points = sorted((r["weight"], r["value"]) for r in result.rows
                        if r["data"] == task.name and r["metric"] == metric)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{task.name} ({metric})")
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
    handle, tmp = tempfile.mkstemp(prefix=".cocktail-plot-", suffix=".png", dir=str(target.parent))
    os.close(handle)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        plt.close(fig)
    return target
