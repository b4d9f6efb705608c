"""Search the probability simplex for merge weights whose *merged* model has the lowest loss.

LM-Cocktail's softmax of individual losses looks at each model alone; two models that are each
mediocre may merge into a good one. This is a pattern search on the simplex: from the start point,
try moving ``step`` of weight from one model to another (every ordered pair); keep any move that
lowers the loss; when no move helps, halve the step. It stops when the evaluation budget is spent or
the step is tiny. It never returns weights worse than its start: a move is kept only if it is
strictly better. ``evaluate`` is called at most ``budget`` times (the start included); points whose
loss is already ``known`` (e.g. the single models, for the linear method) cost nothing.

With K groups of weights (``search_space: layers:K``, see ``layer_groups.py``) each group lies on its
own simplex: the moves are first made in every group at once, then in each group alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

INITIAL_STEP = 0.25
MIN_STEP = 1.0 / 256
KEY_DIGITS = 12


@dataclass
class SearchOutcome:
    """The search's answer and how it got there."""

    start_weights: list[float]
    start_loss: float
    weights: list[float]
    loss: float
    evaluations: int
    trace: list[tuple[list[float], float]] = field(default_factory=list)  # every point evaluated, in order

    @property
    def improvement(self) -> float:
        """How much lower the loss is than at the start (0 when the start was best)."""
        return self.start_loss - self.loss


def _key(weights: Sequence[float]) -> tuple:
    return tuple(round(w, KEY_DIGITS) for w in weights)


def search_weights(evaluate: Callable[[list[float]], float], start: Sequence[float], budget: int,
                   known: Optional[dict[tuple, float]] = None, initial_step: float = INITIAL_STEP,
                   min_step: float = MIN_STEP) -> SearchOutcome:
    """Weights on the simplex near ``start`` with the lowest ``evaluate(weights)``.

    Args:
        evaluate: the loss of the model merged with these weights.
        start: the starting weights (non-negative, summing to 1), e.g. the softmax weights.
        budget: the most calls of ``evaluate``, the start included (at least 1).
        known: losses already known for some weights (``{tuple(weights): loss}``), used for free.
        initial_step: the first amount of weight moved between two models.
        min_step: stop once the step is smaller than this.
    """
    outcome = search_group_weights(lambda groups: evaluate(groups[0]), [start], budget,
                                   {(tuple(k),): v for k, v in (known or {}).items()}, initial_step, min_step)
    return SearchOutcome(outcome.start_weights[0], outcome.start_loss, outcome.weights[0], outcome.loss,
                         outcome.evaluations, [(w[0], v) for w, v in outcome.trace])


def search_group_weights(evaluate: Callable[[list[list[float]]], float], start: Sequence[Sequence[float]],
                         budget: int, known: Optional[dict[tuple, float]] = None,
                         initial_step: float = INITIAL_STEP, min_step: float = MIN_STEP) -> SearchOutcome:
    """As :func:`search_weights`, for K groups of weights (each on the simplex): ``start[g][i]`` is the
    weight of model i in group g, and ``known`` is keyed by tuples of K tuples.

    The moves are those of one group of weights made in every group at once (first), then in each
    group on its own; with one group they are the same moves.
    """
    if budget < 1:
        raise ValueError("the search budget must be at least 1 evaluation")
    groups = len(start)
    count = len(start[0])
    cache: dict[tuple, float] = {_group_key(k): v for k, v in (known or {}).items()}
    trace: list[tuple[list[list[float]], float]] = []
    spent = 0

    def loss_at(weights: list[list[float]]) -> Optional[float]:
        nonlocal spent
        key = _group_key(weights)
        if key in cache:
            return cache[key]
        if spent >= budget:
            return None
        spent += 1
        value = float(evaluate([list(w) for w in weights]))
        cache[key] = value
        trace.append(([list(w) for w in weights], value))
        return value

    best_weights = [[float(w) for w in group] for group in start]
    best = loss_at(best_weights)
    start_loss = best
    for weights, value in (known or {}).items():  # a single model may already beat the start
        if value < best and len(weights) == groups and all(len(w) == count for w in weights):
            best, best_weights = value, [[float(x) for x in w] for w in weights]

    def moved(weights: list[list[float]], which: Sequence[int], i: int, j: int, step: float):
        candidate = [list(w) for w in weights]
        for g in which:
            amount = min(step, candidate[g][j])
            candidate[g][i] += amount
            candidate[g][j] = 0.0 if amount == weights[g][j] else candidate[g][j] - amount
        return candidate

    scopes = [list(range(groups))] + ([[g] for g in range(groups)] if groups > 1 else [])
    step = initial_step
    while step >= min_step and spent < budget:
        improved = False
        for which in scopes:
            for i in range(count):
                for j in range(count):
                    if i == j or all(best_weights[g][j] <= 0.0 for g in which):
                        continue
                    candidate = moved(best_weights, which, i, j, step)
                    value = loss_at(candidate)
                    if value is None:
                        break
                    if value < best:
                        best, best_weights, improved = value, candidate, True
        if not improved:
            step /= 2
    return SearchOutcome([[float(w) for w in group] for group in start], start_loss, best_weights, best, spent,
                         trace)


def _group_key(weights) -> tuple:
    return tuple(_key(w) for w in weights)
