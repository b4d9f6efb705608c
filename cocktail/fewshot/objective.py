"""What ``--search`` minimises when a keep set is given: the target loss within the keep tolerance, or
the target loss traded against the keep loss.

- **tolerance** (the default): a merge is *allowed* when its keep loss is at most ``tolerance`` above
  the lowest keep loss of the inputs; among allowed merges the lowest target loss wins, and any
  allowed merge beats any that is not (those are ranked by how far their keep loss is over the limit,
  so a search that starts outside walks back in).
- **trade-off**: ``target loss + keep_weight * keep loss``.
- without a keep set: the target loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

OVER_LIMIT = 1e9  # added to the objective of a merge whose keep loss is over the limit


@dataclass(frozen=True)
class Objective:
    """``value(loss, keep_loss)``: the number the search lowers."""

    limit: Optional[float] = None  # the most keep loss allowed (tolerance mode)
    keep_weight: Optional[float] = None  # trade-off mode

    @classmethod
    def make(cls, keep_losses: Optional[Sequence[float]], tolerance: Optional[float],
             keep_weight: Optional[float]) -> "Objective":
        """The objective for the inputs' ``keep_losses`` (``None``: no keep set)."""
        if keep_losses is None:
            return cls()
        if keep_weight is not None:
            return cls(keep_weight=float(keep_weight))
        return cls(limit=min(keep_losses) + float(tolerance or 0.0))

    def allowed(self, keep_loss: Optional[float]) -> bool:
        return self.limit is None or (keep_loss is not None and keep_loss <= self.limit)

    def value(self, loss: float, keep_loss: Optional[float]) -> float:
        if not math.isfinite(loss) or (keep_loss is not None and not math.isfinite(keep_loss)):
            return math.inf
        if self.keep_weight is not None:
            return loss + self.keep_weight * float(keep_loss)
        if self.limit is not None and keep_loss > self.limit:
            return OVER_LIMIT + (keep_loss - self.limit)
        return loss

    def to_dict(self) -> dict:
        mode = "trade-off" if self.keep_weight is not None else ("tolerance" if self.limit is not None else "loss")
        return {"mode": mode, "keep_limit": self.limit, "keep_weight": self.keep_weight}
