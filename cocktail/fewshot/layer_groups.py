"""Layer groups for ``search_space: layers:K``: K contiguous groups of layers, each with its own weights,
written as the per-tensor weight schedules the merge engine already runs (``merging/schedules.py``).

The model's L layers are split into K contiguous groups of near-equal size (group g holds layers
``g * L // K`` to ``(g + 1) * L // K - 1``); the embeddings (``embeddings.``, ``embed_tokens.``,
``embed_positions.``, GPT-2's ``wte.`` / ``wpe.``, T5's ``shared.``) go with the first group; everything else outside the layers
(pooler, heads, final norm, sentence-transformers modules) with the last. A model's weight is then a
list of ``{filter, value}`` entries, one per group, the last group being the default entry. Which
group a tensor is in is read back through :class:`~cocktail.merging.schedules.Schedule` itself, so the
weights the search scored and the ones a recipe merges with cannot differ.
"""

from __future__ import annotations

from typing import Optional, Sequence

from cocktail.errors import InputError, option
from cocktail.io.checkpoints import TRANSFORMER
from cocktail.merging.plan import MERGE, Plan
from cocktail.merging.schedules import Schedule, TensorName, layer_count

LAYER_WORDS = r"(?:layer|layers|h|block|blocks)"
EMBEDDINGS = r"(?:^|\.)(?:embeddings|embed_tokens|embed_positions|wte|wpe|shared)\."


def group_layers(layers: int, groups: int) -> list[tuple[int, int]]:
    """``[(first layer, last layer)]`` of each of ``groups`` contiguous groups of ``layers`` layers."""
    if layers < 1:
        raise InputError(f"{option('search_space')} layers:{groups} needs a model with numbered layers "
                         "(encoder.layer.N, layers.N, h.N, ...); this one has none")
    if groups > layers:
        raise InputError(f"{option('search_space')} layers:{groups} asks for more groups than the model has "
                         f"layers ({layers}): use layers:{layers} or fewer")
    return [(g * layers // groups, (g + 1) * layers // groups - 1) for g in range(groups)]


def group_filters(layers: int, groups: int) -> list[Optional[str]]:
    """The regular expression of each group (``None`` for the last one: the default entry)."""
    filters: list[Optional[str]] = []
    for g, (first, last) in enumerate(group_layers(layers, groups)):
        if g == groups - 1:
            filters.append(None)
            continue
        numbers = "|".join(str(i) for i in range(first, last + 1))
        pattern = rf"(?:^|\.){LAYER_WORDS}\.(?:{numbers})\."
        filters.append(f"{EMBEDDINGS}|{pattern}" if g == 0 else pattern)
    return filters


def schedules(group_weights: Sequence[Sequence[float]], layers: int) -> list:
    """Each model's weight as a recipe schedule, from ``group_weights[g][i]`` (group g, model i).

    One group gives plain numbers (an ordinary one-weight-per-model recipe)."""
    groups = len(group_weights)
    if groups == 1:
        return [float(w) for w in group_weights[0]]
    filters = group_filters(layers, groups)
    models = len(group_weights[0])
    out = []
    for i in range(models):
        entries = []
        for pattern, weights in zip(filters, group_weights):
            entry = {"value": float(weights[i])}
            if pattern is not None:
                entry = {"filter": pattern, **entry}
            entries.append(entry)
        out.append(entries)
    return out


def plan_layers(plan: Plan) -> int:
    """How many layers the merged transformer tensors of ``plan`` have (as ``resolve_settings`` counts)."""
    return layer_count(t.canonical for t in plan.tensors if t.action == MERGE and t.component == TRANSFORMER)


def tensor_groups(plan: Plan, groups: int, layers: Optional[int] = None) -> list[Optional[int]]:
    """The group of each tensor of ``plan`` (``None`` for copied tensors), read through the schedule."""
    layers = plan_layers(plan) if layers is None else layers
    if groups == 1:
        return [0 if t.action == MERGE else None for t in plan.tensors]
    models = len(plan.checkpoints)
    schedule = Schedule.parse(schedules([[1.0 / models] * models] * groups, layers)[0], "layer groups")
    out: list[Optional[int]] = []
    for planned in plan.tensors:
        if planned.action != MERGE:
            out.append(None)
            continue
        found = schedule.lookup(TensorName.of(planned.name, planned.canonical), layers)
        out.append(found[0] if found else groups - 1)
    return out


def describe(plan: Plan, groups: int) -> list[dict]:
    """For reports: each group's layers and how many tensors it holds."""
    layers = plan_layers(plan)
    spans = group_layers(layers, groups)
    counts = [0] * groups
    for g in tensor_groups(plan, groups, layers):
        if g is not None:
            counts[g] += 1
    return [{"group": g, "layers": list(span), "tensors": counts[g],
             "with": "embeddings" if g == 0 and groups > 1 else ("heads" if g == groups - 1 and groups > 1 else None)}
            for g, span in enumerate(spans)]
