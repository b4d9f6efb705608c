"""Search the probability simplex for merge weights whose *merged* model has the lowest loss.

LM-Cocktail's softmax of individual losses looks at each model alone; two models that are each
mediocre may merge into a good one. This is a pattern search on the simplex: from the start point,
try moving ``step`` of weight from one model to another (every ordered pair); keep any move that
lowers the loss; when no move helps, halve the step. It stops when the evaluation budget is spent or
the step is tiny. It never returns weights worse than its start: a move is kept only if it is
strictly better. ``evaluate`` is called at most ``budget`` times (the start included); points whose
loss is already ``known`` (e.g. the single models, for the linear method) cost nothing.
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
    if budget < 1:
        raise ValueError("the search budget must be at least 1 evaluation")
    count = len(start)
    cache: dict[tuple, float] = {_key(k): v for k, v in (known or {}).items()}
    trace: list[tuple[list[float], float]] = []
    spent = 0

    def loss_at(weights: list[float]) -> Optional[float]:
        nonlocal spent
        key = _key(weights)
        if key in cache:
            return cache[key]
        if spent >= budget:
            return None
        spent += 1
        value = float(evaluate(list(weights)))
        cache[key] = value
        trace.append((list(weights), value))
        return value

    best_weights = [float(w) for w in start]
    best = loss_at(best_weights)
    start_loss = best
    for weights, value in (known or {}).items():  # a single model may already beat the start
        if value < best and len(weights) == count:
            best, best_weights = value, [float(w) for w in weights]

    step = initial_step
    while step >= min_step and spent < budget:
        improved = False
        for i in range(count):
            for j in range(count):
                if i == j or best_weights[j] <= 0.0:
                    continue
                amount = min(step, best_weights[j])
                candidate = list(best_weights)
                candidate[i] += amount
                candidate[j] = 0.0 if amount == best_weights[j] else candidate[j] - amount
                value = loss_at(candidate)
                if value is None:
                    break
                if value < best:
                    best, best_weights, improved = value, candidate, True
        if not improved:
            step /= 2
    return SearchOutcome([float(w) for w in start], start_loss, best_weights, best, spent, trace)
